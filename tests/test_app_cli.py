"""Bad settings through the real entry points: one clear line, non-zero exit, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT

BAD_CONTEXT = [
    ("gpus", "0"),
    ("gpus", "2"),
    ("gpus", "3"),
    ("gpus", "-1"),
    ("gpus", "four"),
    ("gpus", "100"),
    ("gpu_types_1", "m5.xlarge"),
    ("max_nodes", "0"),
    ("gpu", "4"),
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDK_")}
    env.update(CDK_DISABLE_CLI_TELEMETRY="true", JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20")
    return env


def _assert_one_clear_error(result: subprocess.CompletedProcess[str], key: str, value: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("relion-spot:")]
    assert len(lines) == 1, result.stderr
    assert f"setting '{key}' = '{value}' is not valid" in lines[0]


@pytest.mark.parametrize(("key", "value"), BAD_CONTEXT)
def test_python_app_refuses_bad_setting(key: str, value: str, tmp_path) -> None:
    env = _env()
    env["CDK_CONTEXT_JSON"] = json.dumps({key: value})
    env["CDK_OUTDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _assert_one_clear_error(result, key, value)
    assert not list(tmp_path.glob("*.template.json")), "nothing may be synthesized"


@pytest.mark.parametrize(("key", "value"), [("gpus", "3"), ("gpu", "4"), ("max_nodes", "0")])
def test_cdk_synth_refuses_bad_setting(key: str, value: str, tmp_path) -> None:
    cdk = REPO_ROOT / "node_modules" / ".bin" / "cdk"
    result = subprocess.run(
        [str(cdk), "synth", "--quiet", "-o", str(tmp_path), "-c", f"{key}={value}"],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    _assert_one_clear_error(result, key, value)
    assert not list(tmp_path.glob("*.template.json"))


def test_cdk_synth_succeeds_with_good_settings(tmp_path) -> None:
    cdk = REPO_ROOT / "node_modules" / ".bin" / "cdk"
    result = subprocess.run(
        [str(cdk), "synth", "--quiet", "-o", str(tmp_path), "-c", "gpus=1,4"],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.glob("*.template.json"))
    assert names == [
        "relion-spot-gpu1.template.json",
        "relion-spot-gpu4.template.json",
        "relion-spot-network.template.json",
        "relion-spot-storage.template.json",
    ]
