"""Bad input to the container entrypoint: one clear line, exit status 2, no traceback.

These run the real module as a process, on the host; every case fails before anything is
written (good input is exercised inside the image by test_containers.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from relion_spot.settings import Settings
from relion_spot.slurm import entrypoint
from relion_spot.slurm.spec import SPEC_ENV, spec_from_settings

GOOD_SPEC = spec_from_settings(Settings(), 1).to_json()


def run_entrypoint(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELION_SPOT_")}
    return subprocess.run(
        [sys.executable, "-m", "relion_spot.slurm.entrypoint", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "role '(nothing)' is not one of: controller, node"),
        (("controler",), {}, "role 'controler' is not one of"),
        (("controller", "extra"), {}, "controller takes no arguments"),
        (("controller",), {}, f"{SPEC_ENV} is empty"),
        (("controller",), {SPEC_ENV: "{oops"}, "cluster spec is not JSON"),
        (
            ("controller",),
            {SPEC_ENV: GOOD_SPEC, "RELION_SPOT_CONTROLLER_ADDR": "10.0.0.1"},
            "no Slurm key",
        ),
        (
            ("controller",),
            {SPEC_ENV: GOOD_SPEC, "RELION_SPOT_CONTROLLER_ADDR": "10.0.0.1; x"},
            "controller_addr = '10.0.0.1; x' is not a host name",
        ),
        (("node",), {}, "node name ''"),
        (("node", "gpu_1!"), {}, "node name 'gpu_1!'"),
        (("node", "gpu-1"), {}, "RELION_SPOT_CONTROLLER is empty"),
        (("node", "gpu-1"), {"RELION_SPOT_CONTROLLER": "ctl:port"}, "is not host[:port]"),
        (
            ("node", "gpu-1"),
            {"RELION_SPOT_CONTROLLER": "ctl", "RELION_SPOT_PLACEHOLDER_GPUS": "many"},
            "RELION_SPOT_PLACEHOLDER_GPUS = 'many'",
        ),
        (("node", "gpu-1", "gpu-2"), {}, "at most one argument"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = run_entrypoint(*args, **env)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("relion-spot entrypoint: ")
    assert message in lines[0]


def test_daemon_gets_a_clean_signal_state() -> None:
    """A parent that blocks SIGTERM (slurmscriptd does, for what ResumeProgram starts) or ignores
    SIGPIPE (Python does) must not pass that on to slurmd: exec keeps both."""
    child = (
        "import os, signal\n"
        "from relion_spot.slurm import entrypoint\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGQUIT, signal.SIG_IGN)\n"
        "entrypoint._reset_signals()\n"
        "os.execvp('grep', ['grep', '-E', '^Sig(Blk|Ign):', '/proc/self/status'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=True
    )
    masks = dict(line.split(":\t") for line in result.stdout.strip().splitlines())
    assert int(masks["SigBlk"], 16) == 0, result.stdout
    assert int(masks["SigIgn"], 16) == 0, result.stdout


def test_controller_name_maps_to_loopback_once(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n172.18.0.2\tctl\n")
    for _ in range(2):  # every container start rewrites it
        entrypoint._point_name_at_loopback("ctl.relion-spot.local", hosts)
    lines = hosts.read_text().splitlines()
    assert lines[0].split()[:2] == ["127.0.0.1", "ctl.relion-spot.local"]
    assert lines[1:] == ["127.0.0.1\tlocalhost", "172.18.0.2\tctl"]


def test_unwritable_hosts_file_is_a_warning_not_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entrypoint._point_name_at_loopback("ctl.x", tmp_path / "no-such-dir" / "hosts")
    assert "cannot map ctl.x to loopback" in capsys.readouterr().err
