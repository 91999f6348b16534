"""Benchmark: one scheduled cost-Lambda invocation over 100,000 job attempts on 10,000 instances.

The records are seeded as the record writer leaves them (one item per attempt plus the hourly
index items), written in bulk because 100,000 writer runs would only time the seeding.

moto runs as a separate server process on 127.0.0.1 (so its memory is not counted as the
function's); the invocation runs in a fresh child process, like a cold Lambda, and reports its
wall time and peak RSS. A second invocation over the same window shows the idempotent re-run.

    python benchmarks/cost_lambda.py [--attempts 100000] [--instances 10000]

Targets for the first invocation: <= 15 s of the function's own CPU time (its process's user +
system time: pricing, serialization, boto3; moto's CPU is measured apart, since a real AWS API
spends none of the function's) and <= 512 MB peak. Wall time is printed too: with moto on the
same cores it is mostly moto's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

TARGET_OWN_CPU_SECONDS = 15.0
TARGET_MB = 512.0
CLUSTER = "bench"
RECORDS = "bench-attempts"
COSTS = "bench-costs"
TYPES = (("g5.xlarge", 4), ("g6.xlarge", 4), ("g5.12xlarge", 48))
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto(port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("moto server did not start")


def aws_environment(port: int) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "RELION_SPOT_CLUSTER": CLUSTER,
        "RELION_SPOT_RECORDS_TABLE": RECORDS,
        "RELION_SPOT_COSTS_TABLE": COSTS,
    }


def seed(attempt_count: int, instance_count: int, seed_value: int) -> int:
    """Launch the instances and write the attempt records; returns the invocation's 'now'."""
    import boto3

    from relion_spot import tags
    from relion_spot.cost.pricing import Attempt, NodeUse, Volume
    from relion_spot.cost.store import (
        ATTEMPT_KEY,
        BUCKET_RECORDS,
        BUCKET_SORT_KEY,
        JOB_KEY,
        RECORD,
        attempt_item,
        bucket_key,
        create_tables,
        hour_of,
        serialize,
        shard_of,
    )

    rng = random.Random(seed_value)
    session = boto3.session.Session()
    ec2, dynamodb = session.client("ec2"), session.client("dynamodb")
    create_tables(dynamodb, records_table=RECORDS, costs_table=COSTS)

    started = time.monotonic()
    nodes: list[NodeUse] = []
    vcpus: dict[str, int] = dict(TYPES)
    per_group = -(-instance_count // (len(TYPES) * len(ZONES)))
    for instance_type, _ in TYPES:
        for zone in ZONES:
            count = min(per_group, instance_count - len(nodes))
            while count > 0:
                batch = min(count, 500)
                response = ec2.run_instances(
                    ImageId="ami-12c6146b",
                    MinCount=batch,
                    MaxCount=batch,
                    InstanceType=instance_type,
                    Placement={"AvailabilityZone": zone},
                    TagSpecifications=[
                        {
                            "ResourceType": "instance",
                            "Tags": [
                                {"Key": tags.CLUSTER, "Value": CLUSTER},
                                {"Key": tags.INSTANCE_TYPE, "Value": instance_type},
                            ],
                        }
                    ],
                )
                for raw in response["Instances"]:
                    name = f"gpu-{len(nodes) + 1}"
                    ec2.create_tags(
                        Resources=[raw["InstanceId"]], Tags=[{"Key": tags.NODE, "Value": name}]
                    )
                    nodes.append(
                        NodeUse(
                            node=name,
                            instance_id=raw["InstanceId"],
                            instance_type=instance_type,
                            availability_zone=zone,
                            launch_time=raw["LaunchTime"].timestamp(),
                            volumes=(Volume(8, "gp2"),),
                        )
                    )
                count -= batch
    print(f"seeded {len(nodes)} instances in {time.monotonic() - started:.1f} s", flush=True)

    started = time.monotonic()
    t0 = int(max(n.launch_time or 0 for n in nodes)) + 60
    requests = []
    buckets: dict[str, set[str]] = {}
    written = 0
    job = 0
    while written < attempt_count:
        job += 1
        retries = 1 if rng.random() < 0.3 and written + 1 < attempt_count else 0
        begin = t0 + rng.randrange(0, 18 * 3600)
        for attempt_number in range(retries + 1):
            node = rng.choice(nodes)
            length = rng.randrange(600, 3 * 3600)
            reclaimed = attempt_number < retries
            attempt = Attempt(
                cluster=CLUSTER,
                job_id=str(job),
                start=begin,
                end=begin + length,
                state="NODE_FAIL" if reclaimed else "COMPLETED",
                user=f"user{job % 17}",
                job_name="class3d",
                partition="gpu",
                cpus=rng.choice((vcpus[node.instance_type or ""], 4)),
                node_count=1,
                nodes=(node,),
            )
            item = attempt_item(attempt, recorded_at=begin)
            requests.append({"PutRequest": {"Item": serialize(item)}})
            index = bucket_key(CLUSTER, hour_of(attempt.end), shard_of(attempt.job_id))
            buckets.setdefault(index, set()).add(item[RECORD])
            written += 1
            begin += length + 120
            if len(requests) == 25:
                dynamodb.batch_write_item(RequestItems={RECORDS: requests})
                requests = []
    if requests:
        dynamodb.batch_write_item(RequestItems={RECORDS: requests})
    for index, records in buckets.items():
        dynamodb.put_item(
            TableName=RECORDS,
            Item={
                JOB_KEY: {"S": index},
                ATTEMPT_KEY: {"S": BUCKET_SORT_KEY},
                BUCKET_RECORDS: {"SS": sorted(records)},
            },
        )
    print(
        f"seeded {written} attempts of {job} jobs in {time.monotonic() - started:.1f} s", flush=True
    )
    return t0 + 24 * 3600


def invoke(now: int) -> None:
    """Child process: one handler invocation, as a cold Lambda would run it."""
    started = time.monotonic()
    from relion_spot.cost.config import CostConfig
    from relion_spot.cost.handler import Clients, CostService, handle

    service = CostService(CostConfig.from_env(), Clients.create())
    outcome = handle({"action": "schedule"}, service, now=now)
    seconds = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "outcome": outcome,
            }
        )
    )


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux), to tell moto's share of a run."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(now: int, env: dict[str, str], server_pid: int) -> dict:
    moto_before = process_cpu_seconds(server_pid)
    result = subprocess.run(
        [sys.executable, __file__, "--invoke", str(now)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"invocation failed:\n{result.stderr[-4000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["moto_cpu_seconds"] = process_cpu_seconds(server_pid) - moto_before
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--invoke", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # This checkout's package, in the parent and in the invocation's child alike (an installed
    # relion_spot elsewhere would otherwise be what gets timed).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.invoke is not None:
        invoke(args.invoke)
        return 0
    if args.attempts < 1 or args.instances < 1:
        parser.error("--attempts and --instances must be positive")

    port = free_port()
    server = start_moto(port)
    env = aws_environment(port)
    os.environ.update(env)
    try:
        now = seed(args.attempts, args.instances, args.seed)
        first = run_child(now, env, server.pid)
        again = run_child(now, env, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    for label, run in (("first invocation", first), ("re-run, same window", again)):
        outcome = run["outcome"]
        print(
            f"{label}: own CPU {run['cpu_seconds']:.1f} s, moto server CPU "
            f"{run['moto_cpu_seconds']:.1f} s, {run['seconds']:.1f} s wall, "
            f"peak RSS {run['peak_rss_mb']:.0f} MB, "
            f"jobs priced {outcome['jobs_priced']}, written {outcome['jobs_written']}, "
            f"metric data {outcome['metrics_published']}, "
            f"spot price requests {outcome['spot_price_requests']}"
        )
    ok = first["cpu_seconds"] <= TARGET_OWN_CPU_SECONDS and first["peak_rss_mb"] <= TARGET_MB
    print(
        f"targets (own CPU <= {TARGET_OWN_CPU_SECONDS:.0f} s, <= {TARGET_MB:.0f} MB): "
        f"{'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
