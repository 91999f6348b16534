"""resume / suspend / resume-fail against moto's EC2, with the Slurm commands recorded."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from relion_spot import tags
from relion_spot.powersave import resume, resume_fail, suspend
from relion_spot.powersave.slurm import CommandResult

from .conftest import CLUSTER, CPU_TYPES, GPU_TYPES, CapacityPools, Cloud, Recorder, tag_map


def run_resume(cloud: Cloud, recorder: Recorder, hostlist: str, **env: str) -> int:
    return resume.main([hostlist], environ=cloud.env(**env), runner=recorder, ec2_client=cloud.ec2)


def test_resume_launches_one_tagged_spot_fleet_per_partition(
    cloud: Cloud, recorder: Recorder, pools: CapacityPools
) -> None:
    assert run_resume(cloud, recorder, "gpu-[1-3],cpu-[1-2]") == 0

    live = cloud.live()
    assert sorted(live) == ["cpu-1", "cpu-2", "gpu-1", "gpu-2", "gpu-3"]
    for node, instance in live.items():
        partition = node.split("-")[0]
        assert tag_map(instance) == {
            tags.CLUSTER: CLUSTER,
            tags.PARTITION: partition,
            tags.NODE: node,
            tags.INSTANCE_TYPE: instance["InstanceType"],
        }
        assert instance["InstanceType"] in (GPU_TYPES if partition == "gpu" else CPU_TYPES)
        assert instance["InstanceLifecycle"] == "spot"
        assert instance["ImageId"] == cloud.image_id
        assert instance["SubnetId"] in cloud.subnets

    assert len(pools.requests) == 2, "one CreateFleet call per partition"
    fleets = {tag_map(f)[tags.PARTITION]: f for f in cloud.ec2.describe_fleets()["Fleets"]}
    assert sorted(fleets) == ["cpu", "gpu"]
    for partition, count, types in (("gpu", 3, GPU_TYPES), ("cpu", 2, CPU_TYPES)):
        fleet = fleets[partition]
        assert fleet["Type"] == "instant"
        assert fleet["SpotOptions"]["AllocationStrategy"] == "price-capacity-optimized"
        assert fleet["TargetCapacitySpecification"]["TotalTargetCapacity"] == count
        assert tag_map(fleet)[tags.CLUSTER] == CLUSTER
        (config,) = fleet["LaunchTemplateConfigs"]
        assert (
            config["LaunchTemplateSpecification"]["LaunchTemplateId"] == cloud.templates[partition]
        )
        pairs = {(o["InstanceType"], o["SubnetId"]) for o in config["Overrides"]}
        assert pairs == {(t, s) for t in types for s in cloud.subnets}

    assert sorted(recorder.updates()) == sorted(
        [
            "scontrol",
            "update",
            f"nodename={node}",
            f"instanceid={instance['InstanceId']}",
            f"instancetype={instance['InstanceType']}",
        ]
        for node, instance in live.items()
    )


def test_suspend_terminates_exactly_the_named_nodes_of_this_cluster(
    cloud: Cloud, recorder: Recorder
) -> None:
    assert run_resume(cloud, recorder, "gpu-[1-3]") == 0
    assert run_resume(cloud, recorder, "gpu-[1-3]", cluster="another-lab") == 0
    ours, theirs = cloud.live(), cloud.live("another-lab")
    assert sorted(ours) == sorted(theirs) == ["gpu-1", "gpu-2", "gpu-3"]

    assert suspend.main(["gpu-[1,3]"], environ=cloud.env(), ec2_client=cloud.ec2) == 0

    assert sorted(cloud.live()) == ["gpu-2"]
    assert cloud.live()["gpu-2"]["InstanceId"] == ours["gpu-2"]["InstanceId"]
    assert {n: i["InstanceId"] for n, i in cloud.live("another-lab").items()} == {
        n: i["InstanceId"] for n, i in theirs.items()
    }
    gone = {i["InstanceId"]: i["State"]["Name"] for i in cloud.instances()}
    assert gone[ours["gpu-1"]["InstanceId"]] in ("shutting-down", "terminated")
    assert gone[ours["gpu-3"]["InstanceId"]] in ("shutting-down", "terminated")


def test_suspend_is_idempotent(cloud: Cloud, recorder: Recorder, capsys) -> None:
    assert run_resume(cloud, recorder, "gpu-1") == 0
    assert suspend.main(["gpu-1"], environ=cloud.env(), ec2_client=cloud.ec2) == 0
    capsys.readouterr()
    before = {i["InstanceId"]: i["State"]["Name"] for i in cloud.instances()}

    assert suspend.main(["gpu-[1-2]"], environ=cloud.env(), ec2_client=cloud.ec2) == 0

    assert {i["InstanceId"]: i["State"]["Name"] for i in cloud.instances()} == before
    err = capsys.readouterr().err
    assert "gpu-1: no live instance (already gone)" in err
    assert "gpu-2: no live instance (already gone)" in err


def test_resume_replaces_a_left_over_instance_of_the_same_node(
    cloud: Cloud, recorder: Recorder
) -> None:
    assert run_resume(cloud, recorder, "gpu-1") == 0
    first = cloud.live()["gpu-1"]["InstanceId"]
    assert run_resume(cloud, recorder, "gpu-1") == 0
    second = cloud.live()["gpu-1"]["InstanceId"]
    assert second != first
    assert len(cloud.live()) == 1


def test_first_type_out_of_capacity_falls_back_and_is_left_out_next_time(
    cloud: Cloud, recorder: Recorder, pools: CapacityPools, capsys
) -> None:
    pools.empty = {"g5.xlarge": "InsufficientInstanceCapacity"}

    assert run_resume(cloud, recorder, "gpu-[1-2]") == 0

    assert {i["InstanceType"] for i in cloud.live().values()} == {"g6.xlarge"}
    assert pools.requested_types() == ["g5.xlarge", "g6.xlarge"]
    memory = json.loads((cloud.state_dir / "capacity.json").read_text())
    assert memory["g5.xlarge"]["code"] == "InsufficientInstanceCapacity"
    assert memory["g5.xlarge"]["until"] > time.time() + 800
    assert "InsufficientInstanceCapacity (g5.xlarge)" in capsys.readouterr().err

    pools.empty = {}
    assert run_resume(cloud, recorder, "gpu-3") == 0
    assert pools.requested_types() == ["g6.xlarge"], "the type that failed is left out"
    assert "leaving out g5.xlarge" in capsys.readouterr().err
    assert not any("state=" in " ".join(c) for c in recorder.calls)


def test_every_type_out_of_capacity_sets_the_nodes_down_with_the_ec2_reason(
    cloud: Cloud, recorder: Recorder, pools: CapacityPools
) -> None:
    pools.empty = {
        "g5.xlarge": "InsufficientInstanceCapacity",
        "g6.xlarge": "UnfulfillableCapacity",
    }

    assert run_resume(cloud, recorder, "gpu-[1-2]") == 0, "a shortage is handled, not a failure"

    assert cloud.live() == {}
    down, release = recorder.updates()
    assert down[:4] == ["scontrol", "update", "nodename=gpu-[1-2]", "state=down"]
    assert down[4].startswith("reason=EC2 InsufficientInstanceCapacity (g5.xlarge): There is no")
    assert "UnfulfillableCapacity (g6.xlarge)" in down[4]
    assert release == ["scontrol", "update", "nodename=gpu-[1-2]", "state=power_down_force"]

    memory = json.loads((cloud.state_dir / "capacity.json").read_text())
    assert sorted(memory) == ["g5.xlarge", "g6.xlarge"]
    pools.empty = {}
    assert run_resume(cloud, recorder, "gpu-3") == 0
    assert pools.requested_types() == ["g5.xlarge", "g6.xlarge"], "all failed: try all again"
    assert cloud.live()["gpu-3"]["InstanceType"] == "g5.xlarge"
    memory = json.loads((cloud.state_dir / "capacity.json").read_text())
    assert sorted(memory) == ["g6.xlarge"], "a type that launched again is forgotten"


def test_partial_fleet_launches_what_it_can_and_hands_back_the_rest(
    cloud: Cloud, recorder: Recorder, pools: CapacityPools
) -> None:
    pools.at_most = 1

    assert run_resume(cloud, recorder, "gpu-[1-3]") == 0

    assert sorted(cloud.live()) == ["gpu-1"]
    down = [c for c in recorder.updates() if "state=down" in c]
    assert [c[2] for c in down] == ["nodename=gpu-[2-3]"]
    assert down[0][4].startswith("reason=EC2 InsufficientInstanceCapacity")


def test_a_refused_request_sets_nodes_down_and_exits_nonzero(
    cloud: Cloud, recorder: Recorder
) -> None:
    env = cloud.env()
    groups = json.loads(env["RELION_SPOT_NODE_GROUPS"])
    groups["gpu"]["launch_template_id"] = "lt-0123456789abcdef0"
    env["RELION_SPOT_NODE_GROUPS"] = json.dumps(groups)

    status = resume.main(["gpu-1"], environ=env, runner=recorder, ec2_client=cloud.ec2)

    assert status == 1
    assert cloud.live() == {}
    down = recorder.updates()[0]
    assert down[:4] == ["scontrol", "update", "nodename=gpu-1", "state=down"]
    assert "reason=EC2 InvalidLaunchTemplateId" in down[4]


def test_resume_names_the_waiting_jobs_from_slurms_resume_file(
    cloud: Cloud, recorder: Recorder, tmp_path: Path, capsys
) -> None:
    resume_file = tmp_path / "resume.json"
    resume_file.write_text(
        json.dumps(
            {
                "all_nodes_resume": "gpu-[1-2]",
                "jobs": [
                    {"job_id": 17, "nodes_alloc": "gpu-[1-2]", "nodes_resume": "gpu-[1-2]"},
                    {"job_id": 18, "nodes_alloc": "gpu-2", "nodes_resume": "gpu-2"},
                ],
            }
        )
    )
    status = resume.main(
        ["gpu-[1-2]"],
        environ=cloud.env(SLURM_RESUME_FILE=str(resume_file)),
        runner=recorder,
        ec2_client=cloud.ec2,
    )
    assert status == 0
    assert "resume gpu-[1-2] for job(s) 17,18" in capsys.readouterr().err


def test_a_spot_quota_of_zero_holds_the_jobs_with_the_reason_instead_of_retrying(
    cloud: Cloud, recorder: Recorder, pools: CapacityPools, tmp_path: Path, capsys
) -> None:
    """A new account's G/VT spot quota is 0 vCPUs: no retry launches anything, so the waiting
    jobs are held with EC2's reason (Slurm would otherwise requeue and relaunch them forever)."""
    pools.empty = {t: "MaxSpotInstanceCountExceeded" for t in ("g5.xlarge", "g6.xlarge")}
    resume_file = tmp_path / "resume.json"
    resume_file.write_text(
        json.dumps({"jobs": [{"job_id": 21, "nodes_alloc": "gpu-1", "nodes_resume": "gpu-1"}]})
    )

    status = resume.main(
        ["gpu-1"],
        environ=cloud.env(SLURM_RESUME_FILE=str(resume_file)),
        runner=recorder,
        ec2_client=cloud.ec2,
    )

    assert status == 1, "not a capacity shortage: Slurm's log must show it as a failure"
    assert cloud.live() == {}
    assert ["scontrol", "hold", "21"] in recorder.calls
    (comment,) = [c for c in recorder.calls if c[:3] == ["scontrol", "update", "jobid=21"]]
    assert comment[3].startswith(
        "admincomment=relion-spot held: fix the account (relion-spot doctor), then scontrol "
        "release: EC2 MaxSpotInstanceCountExceeded"
    )
    memory = cloud.state_dir / "capacity.json"
    assert not memory.exists() or json.loads(memory.read_text()) == {}, "not a shortage"
    assert "job(s) 21 held" in capsys.readouterr().err


def test_a_held_jobs_reason_reaches_its_submissions_intake_item(
    cloud: Cloud, recorder: Recorder, pools: CapacityPools, tmp_path: Path
) -> None:
    """Slurm's admin comment is for whoever has a shell; the lab reads the intake table."""
    import boto3

    from relion_spot.intake.table import IntakeTable, Record, create_table

    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    create_table(dynamodb, "intake")
    sid = "5f0c2d1e-1111-4222-8333-444455556666"
    IntakeTable(dynamodb, "intake").finish(Record(sid, "accepted", job_id="21"))
    pools.empty = {t: "MaxSpotInstanceCountExceeded" for t in ("g5.xlarge", "g6.xlarge")}
    resume_file = tmp_path / "resume.json"
    resume_file.write_text(
        json.dumps({"jobs": [{"job_id": 21, "nodes_alloc": "gpu-1", "nodes_resume": "gpu-1"}]})
    )
    listed = {"job_id": 21, "job_state": ["PENDING"], "comment": f"relion-spot:{sid}"}
    recorder.replies[("squeue", "--json", "--jobs=21")] = CommandResult(
        0, json.dumps({"jobs": [listed]})
    )
    env = cloud.env(SLURM_RESUME_FILE=str(resume_file), RELION_SPOT_INTAKE_TABLE="intake")
    resume.main(["gpu-1"], environ=env, runner=recorder, ec2_client=cloud.ec2, clock=lambda: 7.0)
    item = dynamodb.get_item(TableName="intake", Key={"submission_id": {"S": sid}})["Item"]
    assert item["held_reason"]["S"].startswith(
        "fix the account (relion-spot doctor), then scontrol release: EC2 "
        "MaxSpotInstanceCountExceeded"
    )
    assert item["held_at"]["N"] == "7"


def test_a_capacity_shortage_never_holds_jobs(
    cloud: Cloud, recorder: Recorder, pools: CapacityPools, tmp_path: Path
) -> None:
    pools.empty = {t: "InsufficientInstanceCapacity" for t in ("g5.xlarge", "g6.xlarge")}
    resume_file = tmp_path / "resume.json"
    resume_file.write_text(
        json.dumps({"jobs": [{"job_id": 22, "nodes_alloc": "gpu-1", "nodes_resume": "gpu-1"}]})
    )
    env = cloud.env(SLURM_RESUME_FILE=str(resume_file))
    assert resume.main(["gpu-1"], environ=env, runner=recorder, ec2_client=cloud.ec2) == 0
    assert not any(c[:2] == ["scontrol", "hold"] for c in recorder.calls)


def test_slurm_not_answering_is_an_error_exit(cloud: Cloud, recorder: Recorder) -> None:
    recorder.replies[("scontrol",)] = CommandResult(1, "", "slurm_update error: Unable to contact")
    assert run_resume(cloud, recorder, "gpu-1") == 1
    assert sorted(cloud.live()) == ["gpu-1"], "the node was launched; only Slurm was not told"


def test_resume_fail_terminates_the_nodes_and_stray_instances_and_releases_the_names(
    cloud: Cloud, recorder: Recorder
) -> None:
    assert run_resume(cloud, recorder, "gpu-[1-2]") == 0
    assert run_resume(cloud, recorder, "gpu-1", cluster="another-lab") == 0
    stray = _unnamed_instance(cloud, "gpu")
    recorder.calls.clear()

    status = resume_fail.main(
        ["gpu-1"],
        environ=cloud.env(),
        runner=recorder,
        ec2_client=cloud.ec2,
        clock=lambda: time.time() + resume_fail.ORPHAN_SECONDS + 60,
    )

    assert status == 0
    assert sorted(cloud.live()) == ["gpu-2"]
    assert sorted(cloud.live("another-lab")) == ["gpu-1"]
    states = {i["InstanceId"]: i["State"]["Name"] for i in cloud.instances()}
    assert states[stray] in ("shutting-down", "terminated")
    assert recorder.calls == [
        ["scontrol", "update", "nodename=gpu-1", "nodeaddr=gpu-1", "nodehostname=gpu-1"],
        [
            "scontrol",
            "update",
            "nodename=gpu-1",
            "state=power_down_force",
            f"reason={resume_fail.REASON}",
        ],
    ]


def test_resume_fail_leaves_a_fresh_unnamed_instance_to_the_resume_naming_it(
    cloud: Cloud, recorder: Recorder
) -> None:
    fresh = _unnamed_instance(cloud, "gpu")
    assert (
        resume_fail.main(["gpu-1"], environ=cloud.env(), runner=recorder, ec2_client=cloud.ec2) == 0
    )
    states = {i["InstanceId"]: i["State"]["Name"] for i in cloud.instances()}
    assert states[fresh] == "running"


def _unnamed_instance(cloud: Cloud, partition: str) -> str:
    """An instance launched with the cluster's launch tags that never got its node name."""
    reservation = cloud.ec2.run_instances(
        LaunchTemplate={"LaunchTemplateId": cloud.templates[partition]},
        MinCount=1,
        MaxCount=1,
        SubnetId=cloud.subnets[0],
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": tags.CLUSTER, "Value": CLUSTER},
                    {"Key": tags.PARTITION, "Value": partition},
                ],
            }
        ],
    )
    return reservation["Instances"][0]["InstanceId"]


@pytest.mark.parametrize("program", ["resume", "suspend", "resume_fail"])
@pytest.mark.parametrize(
    ("args", "env_change", "message"),
    [
        (["gpu-9"], {}, "unknown node names gpu-9; this cluster has gpu-[1-4], cpu-[1-2]"),
        (["login-1,gpu-1"], {}, "unknown node names login-1"),
        (["gpu-[1-"], {}, "hostlist 'gpu-[1-': unbalanced brackets"),
        (["gpu-[3-1]"], {}, "hostlist 'gpu-[3-1]': start > stop"),
        ([""], {}, "no nodes given"),
        ([], {}, "expected one argument, a Slurm host list"),
        (["gpu-1"], {"RELION_SPOT_CLUSTER": ""}, "RELION_SPOT_CLUSTER is not set"),
        (["gpu-1"], {"RELION_SPOT_SUBNETS": ""}, "RELION_SPOT_SUBNETS is not set"),
        (["gpu-1"], {"RELION_SPOT_SUBNETS": "sn-1"}, "['sn-1'] are not subnet ids"),
        (["gpu-1"], {"RELION_SPOT_NODE_GROUPS": "{"}, "RELION_SPOT_NODE_GROUPS is not JSON"),
        (["gpu-1"], {"AWS_DEFAULT_REGION": ""}, "AWS_DEFAULT_REGION is not set"),
    ],
)
def test_bad_input_is_one_clear_line_exit_2_and_nothing_done(
    cloud: Cloud,
    recorder: Recorder,
    capsys,
    program: str,
    args: list[str],
    env_change: dict[str, str],
    message: str,
) -> None:
    assert run_resume(cloud, recorder, "gpu-[1-2]") == 0
    before = {i["InstanceId"]: i["State"]["Name"] for i in cloud.instances()}
    recorder.calls.clear()
    capsys.readouterr()
    env = cloud.env(**env_change)
    module = {"resume": resume, "suspend": suspend, "resume_fail": resume_fail}[program]
    kwargs = {"runner": recorder} if program != "suspend" else {}

    status = module.main(args, environ=env, ec2_client=cloud.ec2, **kwargs)

    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]
    assert "nothing" in lines[0]
    assert {i["InstanceId"]: i["State"]["Name"] for i in cloud.instances()} == before
    assert recorder.calls == []


class TagRefusals:
    """EC2 answering CreateTags with an error for the first ``count`` calls."""

    def __init__(self, client: Any, code: str, count: int) -> None:
        self.client, self.code, self.left = client, code, count
        self.refused: list[str] = []
        self._lock = threading.Lock()
        client.meta.events.register("before-call.ec2.CreateTags", self.answer)

    def answer(self, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        with self._lock:
            if self.left <= 0:
                return None
            self.left -= 1
            self.refused.append(params["body"]["ResourceId.1"])
        http = AWSResponse("https://ec2.us-east-1.amazonaws.com/", 400, {}, None)
        return http, {"Error": {"Code": self.code, "Message": "refused for the test"}}

    def remove(self) -> None:
        self.client.meta.events.unregister("before-call.ec2.CreateTags", self.answer)


def test_an_instance_that_cannot_be_named_is_terminated_and_its_node_handed_back(
    cloud: Cloud, recorder: Recorder
) -> None:
    refusals = TagRefusals(cloud.ec2, "UnauthorizedOperation", 1)
    try:
        status = run_resume(cloud, recorder, "gpu-[1-3]")
    finally:
        refusals.remove()

    assert status == 1
    (refused,) = refusals.refused
    assert len(cloud.live()) == 2 and refused not in {
        i["InstanceId"] for i in cloud.live().values()
    }
    states = {i["InstanceId"]: i["State"]["Name"] for i in cloud.instances()}
    assert states[refused] in ("shutting-down", "terminated")
    (down,) = [c for c in recorder.updates() if "state=down" in c]
    (missing,) = {"gpu-1", "gpu-2", "gpu-3"} - set(cloud.live())
    assert down[2:4] == [f"nodename={missing}", "state=down"]
    assert down[4] == "reason=EC2 tagging failed: UnauthorizedOperation: refused for the test"


def test_a_not_yet_visible_instance_is_tagged_on_retry(cloud: Cloud, recorder: Recorder) -> None:
    refusals = TagRefusals(cloud.ec2, "InvalidInstanceID.NotFound", 2)
    naps: list[float] = []
    try:
        status = resume.main(
            ["gpu-1"],
            environ=cloud.env(),
            runner=recorder,
            ec2_client=cloud.ec2,
            sleep=naps.append,
        )
    finally:
        refusals.remove()
    assert status == 0
    assert naps == [0.5, 1.0]
    assert tag_map(cloud.live()["gpu-1"])[tags.NODE] == "gpu-1"
