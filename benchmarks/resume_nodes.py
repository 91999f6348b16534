"""Benchmark: Slurm's ResumeProgram launching N nodes, its own wall time against moto in-process.

The program runs as Slurm runs it (its own boto3 session and EC2 client, the capacity file on
disk, one log line per decision) except that scontrol is a recorder answering at once, so the
figure is the program's own time, not slurmctld's. Printed: the cold run (client created inside,
as in a fresh process), a warm run on a ready client, the EC2 calls made and the scontrol
command lines produced.

    python benchmarks/resume_nodes.py [--nodes 64]

Target: <= 2 s for 64 nodes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TARGET_SECONDS = 2.0
CLUSTER = "bench"
TYPES = ("g5.xlarge", "g6.xlarge", "g6e.xlarge")
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")


def prepare(ec2: Any, nodes: int, workdir: Path) -> dict[str, str]:
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i * 16}.0/20", AvailabilityZone=zone)[
            "Subnet"
        ]["SubnetId"]
        for i, zone in enumerate(ZONES)
    ]
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{CLUSTER}-gpu",
        LaunchTemplateData={"ImageId": "ami-0123456789abcdef0", "InstanceType": TYPES[0]},
    )["LaunchTemplate"]["LaunchTemplateId"]
    groups = {
        "gpu": {
            "launch_template_id": template,
            "instance_types": list(TYPES),
            "max_nodes": nodes,
            "gpus_per_node": 1,
        }
    }
    return {
        "AWS_DEFAULT_REGION": "us-east-1",
        "RELION_SPOT_CLUSTER": CLUSTER,
        "RELION_SPOT_NODE_GROUPS": json.dumps(groups),
        "RELION_SPOT_SUBNETS": ",".join(subnets),
        "RELION_SPOT_POWERSAVE_STATE_DIR": str(workdir / "state"),
        "RELION_SPOT_POWERSAVE_LOG": str(workdir / "powersave.log"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=64)
    args = parser.parse_args(argv)
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("MOTO_EC2_LOAD_DEFAULT_AMIS", "false"),
    ):
        os.environ[name] = value
    os.environ.pop("AWS_PROFILE", None)

    import boto3
    from moto import mock_aws

    from relion_spot.powersave import resume
    from relion_spot.powersave.slurm import CommandResult

    commands: list[list[str]] = []

    def scontrol(argv: Sequence[str]) -> CommandResult:
        commands.append(list(argv))
        return CommandResult(0)

    hostlist = f"gpu-[1-{args.nodes}]" if args.nodes > 1 else "gpu-1"
    with tempfile.TemporaryDirectory() as tmp, mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        env = prepare(ec2, args.nodes, Path(tmp))

        started = time.perf_counter()
        cold_status = resume.main([hostlist], environ=env, runner=scontrol)
        cold = time.perf_counter() - started
        cold_commands = len(commands)
        launched = _live(ec2)

        calls: Counter[str] = Counter()
        ec2.meta.events.register("before-call.ec2", lambda model, **_: calls.update([model.name]))
        commands.clear()
        started = time.perf_counter()
        warm_status = resume.main([hostlist], environ=env, runner=scontrol, ec2_client=ec2)
        warm = time.perf_counter() - started
        relaunched = _live(ec2)
    logging.shutdown()

    ok = cold_status == warm_status == 0 and launched == relaunched == args.nodes
    print(f"resume of {args.nodes} nodes against moto in-process (scontrol recorded, not run)")
    print(f"  cold run (own boto3 client): {cold:.3f} s   target <= {TARGET_SECONDS:.1f} s")
    print(f"  warm run (ready client):     {warm:.3f} s   (replaces the {launched} live nodes)")
    print(f"  instances launched: {launched} (cold), {relaunched} (warm)")
    print(f"  EC2 calls (warm run): {dict(sorted(calls.items()))}")
    print(f"  scontrol command lines: {cold_commands} (cold), {len(commands)} (warm)")
    print(f"  result: {'PASS' if ok and cold <= TARGET_SECONDS else 'FAIL'}")
    return 0 if ok and cold <= TARGET_SECONDS else 1


def _live(ec2: Any) -> int:
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )
    return sum(len(r["Instances"]) for page in pages for r in page["Reservations"])


if __name__ == "__main__":
    sys.exit(main())
