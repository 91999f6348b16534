"""Host lists, capacity memory, the scontrol command lines, and the programs as Slurm runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relion_spot.powersave import resume, resume_fail, suspend
from relion_spot.powersave.capacity import CapacityMemory
from relion_spot.powersave.config import NodeGroup
from relion_spot.powersave.nodes import NodeListError, by_partition, compress, expand_hostlist
from relion_spot.powersave.slurm import Slurm, clean_reason

from .conftest import Recorder

GROUPS = {
    "gpu": NodeGroup("gpu", "lt-1", ("g5.xlarge",), 8),
    "cpu": NodeGroup("cpu", "lt-2", ("m6i.xlarge",), 1),
}


def test_host_lists_group_by_partition_in_node_order() -> None:
    names = expand_hostlist("gpu-[3,1-2],cpu-1,gpu-8")
    assert by_partition(names, GROUPS) == {
        "gpu": ["gpu-1", "gpu-2", "gpu-3", "gpu-8"],
        "cpu": ["cpu-1"],
    }


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["gpu-1"], "gpu-1"),
        (["gpu-2", "gpu-1", "gpu-3", "gpu-5"], "gpu-[1-3,5]"),
        (["gpu-1", "cpu-1", "gpu-2"], "cpu-1,gpu-[1-2]"),
    ],
)
def test_compress_round_trips(names: list[str], expected: str) -> None:
    assert compress(names) == expected
    assert sorted(expand_hostlist(expected)) == sorted(set(names))


@pytest.mark.parametrize("names", [["gpu-0"], ["gpu-9"], ["cpu-2"], ["gpu-01"], ["gpu"], ["x-1"]])
def test_names_outside_the_groups_are_refused(names: list[str]) -> None:
    with pytest.raises(
        NodeListError, match=r"unknown node names .* this cluster has gpu-\[1-8\], cpu-1"
    ):
        by_partition(names, GROUPS)


def test_capacity_memory_leaves_failed_types_out_until_the_backoff_ends(tmp_path: Path) -> None:
    now = [1000.0]
    memory = CapacityMemory(tmp_path, 600, clock=lambda: now[0])
    types = ["g5.xlarge", "g6.xlarge", "g4dn.xlarge"]
    assert memory.order(types) == (types, [])

    memory.remember({"g5.xlarge": "InsufficientInstanceCapacity"})
    assert memory.order(types) == (["g6.xlarge", "g4dn.xlarge"], ["g5.xlarge"])

    now[0] += 100
    memory.remember({"g6.xlarge": "SpotMaxPriceTooLow", "g4dn.xlarge": "UnfulfillableCapacity"})
    assert memory.order(types) == (["g5.xlarge", "g6.xlarge", "g4dn.xlarge"], []), (
        "all failed: all are tried, the oldest failure first"
    )

    now[0] += 550
    assert memory.order(types) == (["g5.xlarge"], ["g6.xlarge", "g4dn.xlarge"])
    stored = json.loads((tmp_path / "capacity.json").read_text())
    assert set(stored) == {"g5.xlarge", "g6.xlarge", "g4dn.xlarge"}

    memory.forget(["g6.xlarge"])
    assert set(json.loads((tmp_path / "capacity.json").read_text())) == {"g4dn.xlarge"}, (
        "a write drops expired entries too"
    )


def test_a_corrupt_capacity_file_is_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "capacity.json").write_text("{half")
    memory = CapacityMemory(tmp_path, 600)
    assert memory.order(["g5.xlarge"]) == (["g5.xlarge"], [])
    memory.remember({"g5.xlarge": "InsufficientInstanceCapacity"})
    assert memory.order(["g5.xlarge", "g6.xlarge"]) == (["g6.xlarge"], ["g5.xlarge"])


def test_scontrol_command_lines() -> None:
    recorder = Recorder()
    slurm = Slurm(runner=recorder)
    slurm.fail_launch(["gpu-2", "gpu-1", "gpu-4"], "EC2 InsufficientInstanceCapacity\n(g5.xlarge)")
    slurm.drain("gpu-3", "spot reclaim")
    slurm.requeue(["12", "13_4"])
    slurm.power_down_asap("gpu-3", "spot reclaim")
    slurm.jobs_on("gpu-3")
    assert recorder.calls == [
        [
            "scontrol",
            "update",
            "nodename=gpu-[1-2,4]",
            "state=down",
            "reason=EC2 InsufficientInstanceCapacity (g5.xlarge)",
        ],
        ["scontrol", "update", "nodename=gpu-[1-2,4]", "state=power_down_force"],
        ["scontrol", "update", "nodename=gpu-3", "state=drain", "reason=spot reclaim"],
        ["scontrol", "requeue", "12,13_4"],
        ["scontrol", "update", "nodename=gpu-3", "state=power_down_asap", "reason=spot reclaim"],
        [
            "squeue",
            "--noheader",
            "--nodelist=gpu-3",
            "--states=RUNNING,CONFIGURING,SUSPENDED",
            "--format=%i",
        ],
    ]


def test_reasons_are_one_bounded_line() -> None:
    assert clean_reason("a\n b\t c") == "a b c"
    assert len(clean_reason("x" * 1000)) == 240


@pytest.mark.parametrize("module", ["resume", "suspend", "resume_fail"])
def test_programs_as_slurm_runs_them_refuse_bad_input_without_a_traceback(
    module: str, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "RELION_SPOT_CLUSTER": "lab-1gpu",
        "RELION_SPOT_NODE_GROUPS": json.dumps(
            {"gpu": {"launch_template_id": "lt-1", "instance_types": ["g5.xlarge"], "max_nodes": 2}}
        ),
        "RELION_SPOT_SUBNETS": "subnet-1",
        "RELION_SPOT_POWERSAVE_STATE_DIR": str(tmp_path / "state"),
        "RELION_SPOT_POWERSAVE_LOG": str(tmp_path / "powersave.log"),
    }
    done = subprocess.run(
        [sys.executable, "-m", f"relion_spot.powersave.{module}", "gpu-[1-3]"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"relion-spot {module.replace('_', '-')}: nothing "
        f"{ {'resume': 'launched', 'suspend': 'terminated', 'resume_fail': 'changed'}[module] }: "
        "unknown node names gpu-3; this cluster has gpu-[1-2]"
    ]
    log_line = (tmp_path / "powersave.log").read_text()
    assert "ERROR nothing" in log_line and "gpu-3" in log_line


def test_ec2_out_of_reach_hands_the_nodes_back_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    env = {
        "AWS_DEFAULT_REGION": "us-east-1",
        "RELION_SPOT_CLUSTER": "lab-1gpu",
        "RELION_SPOT_NODE_GROUPS": json.dumps(
            {"gpu": {"launch_template_id": "lt-1", "instance_types": ["g5.xlarge"], "max_nodes": 2}}
        ),
        "RELION_SPOT_SUBNETS": "subnet-1",
        "RELION_SPOT_POWERSAVE_STATE_DIR": str(tmp_path / "state"),
        "RELION_SPOT_POWERSAVE_LOG": "",
    }
    recorder = Recorder()

    assert resume.main(["gpu-[1-2]"], environ=env, runner=recorder) == 1

    down, release = recorder.calls
    assert down[:4] == ["scontrol", "update", "nodename=gpu-[1-2]", "state=down"]
    assert down[4].startswith("reason=EC2 EndpointConnectionError")
    assert release[3] == "state=power_down_force"
    assert not (tmp_path / "state" / "capacity.json").exists(), "not a capacity shortage"
    assert "Traceback" not in capsys.readouterr().err
    assert suspend.main(["gpu-1"], environ=env) == 1
    assert resume_fail.main(["gpu-1"], environ=env, runner=Recorder()) == 1
    err = capsys.readouterr().err
    assert err.count("could not find the nodes' instances: Could not connect") == 2
    assert "Traceback" not in err
