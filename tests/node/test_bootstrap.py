"""The node bootstrap template: every placeholder filled, valid bash, shellcheck-clean."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from string import Template

import pytest

from relion_spot import tags
from relion_spot.node import bootstrap

VALUES = {
    "cluster_name": "lab-1gpu",
    "file_system_id": "fs-0123456789abcdef0",
    "data_access_point_id": "fsap-0123456789abcdef0",
    "containers_access_point_id": "fsap-0fedcba9876543210",
    "slurm_image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/cdk-hnb659fds:abc123",
    "controller": "slurmctld.lab-1gpu.relion-spot.local:6817",
    "key_secret_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:lab-1gpu-key-AbCdEf",
    "spot_events_table": "",
}


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bootstrap") / "user-data.sh"
    path.write_text(bootstrap.render(**VALUES))
    return path


def test_the_template_names_exactly_the_documented_placeholders() -> None:
    text = bootstrap.TEMPLATE_PATH.read_text()
    identifiers = set(Template(text).get_identifiers())
    assert identifiers == {*bootstrap.PLACEHOLDERS, "node_tag_key"}
    header = text.split("set -euo pipefail")[0]
    for name in identifiers:
        assert re.search(rf"^#   {name} ", header, re.MULTILINE), f"{name} is not documented"


def test_rendered_script_carries_the_values_and_no_placeholder(script: Path) -> None:
    text = script.read_text()
    for value in VALUES.values():
        assert value in text
    assert f"readonly NODE_TAG_KEY='{tags.NODE}'" in text
    assert "${cluster_name}" not in text and "$$" not in text
    assert "docker run -d --name" in text and "node >/dev/null" in text
    assert "tls,iam,accesspoint=" in text
    assert "-m relion_spot.node.spot_watcher" in text


def test_rendered_script_is_valid_bash(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_rendered_script_passes_shellcheck(script: Path) -> None:
    done = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", str(script)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cluster_name": ""}, "cluster_name = '', need a non-empty string"),
        ({"controller": "x'; rm -rf /"}, "contains a quote or newline"),
        ({"extra": "1"}, "unknown ['extra']"),
    ],
)
def test_bad_values_are_refused(change: dict[str, str], message: str) -> None:
    with pytest.raises(bootstrap.BootstrapError, match=re.escape(message)):
        bootstrap.render(**{**VALUES, **change})


def test_a_missing_value_is_refused() -> None:
    values = dict(VALUES)
    del values["slurm_image"]
    with pytest.raises(bootstrap.BootstrapError, match=re.escape("missing ['slurm_image']")):
        bootstrap.render(**values)
