"""``relion-spot local up | down | status``: the embedded cloud kept running, so the lab's own
commands work against it with ``--stack local`` and no AWS account (relion_spot.local.standing).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from . import standing

UP_SECONDS = 600.0
"""Cold, the images are built first (scripts/setup-docker.sh); warm, the cloud is up in ~30 s."""
DOWN_SECONDS = 180.0


def up(work_dir: Path, data: Path | None, gpus: int, out: TextIO) -> int:
    running = standing.holder(work_dir)
    if running is not None:
        state = "up" if standing.Standing.read(work_dir) else "starting"
        print(f"already {state} (process {running}): use --stack {standing.STACK}", file=out)
        return 0
    if data is not None and not data.is_dir():
        raise standing.StandingError(f"--data {data}: no such directory")
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / standing.STATE_FILE).unlink(missing_ok=True)
    log_path = work_dir / standing.LOG_FILE
    command = [
        sys.executable, "-m", "relion_spot.local.standing", "serve",
        "--work-dir", str(work_dir.resolve()), "--gpus", str(gpus),
        *(["--data", str(data.resolve())] if data is not None else []),
    ]  # fmt: skip
    with log_path.open("ab") as log:
        server = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + UP_SECONDS
    while (found := standing.Standing.read(work_dir)) is None:
        if server.poll() is not None or time.monotonic() > deadline:
            if server.poll() is None:
                server.terminate()
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise standing.StandingError(
                "the embedded cloud did not come up: " + " / ".join(tail) + f" (log: {log_path})"
            )
        time.sleep(1)
    print(
        f"embedded cloud {found.cluster} up (process {found.pid}, moto at {found.endpoint}); "
        f"/data is {found.data_dir}\n"
        f"use it with --stack {standing.STACK}, e.g. relion-spot submit synthetic --stack "
        f"{standing.STACK} --project-dir /data/try; stop it with relion-spot local down",
        file=out,
    )
    return 0


def down(work_dir: Path, out: TextIO) -> int:
    pid = standing.holder(work_dir)
    if pid is None:
        # Whatever a process that died left behind goes too.
        standing.remove_leftovers(work_dir)
        (work_dir / standing.STATE_FILE).unlink(missing_ok=True)
        print("not running", file=out)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DOWN_SECONDS
    while standing.holder(work_dir) is not None:
        if time.monotonic() > deadline:
            raise standing.StandingError(
                f"process {pid} did not stop within {DOWN_SECONDS:.0f} s "
                f"(log: {work_dir / standing.LOG_FILE})"
            )
        time.sleep(1)
    standing.remove_leftovers(work_dir)
    print("embedded cloud stopped; /data is kept", file=out)
    return 0


def status(work_dir: Path, out: TextIO) -> int:
    found = standing.Standing.read(work_dir)
    if found is None or not found.alive(work_dir):
        print("not running (relion-spot local up starts it)", file=out)
        return 3
    from .. import tags

    ec2 = standing.session(work_dir).client("ec2")
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": f"tag:{tags.CLUSTER}", "Values": [found.cluster]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    nodes = [
        f"{i['InstanceId']} ({i.get('InstanceType', '?')})"
        for page in pages
        for r in page["Reservations"]
        for i in r["Instances"]
    ]
    print(
        f"up: {found.cluster}, process {found.pid}, moto at {found.endpoint}, up "
        f"{(time.time() - found.started_at) / 60:.0f} min; /data is {found.data_dir}; "
        f"nodes: {', '.join(nodes) if nodes else 'none (all asleep)'}",
        file=out,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        if args.action == "up":
            if not 1 <= args.gpus <= 8:
                print(f"relion-spot local: --gpus {args.gpus}: give 1 to 8", file=sys.stderr)
                return 2
            return up(args.work_dir, args.data, args.gpus, out)
        if args.action == "down":
            return down(args.work_dir, out)
        return status(args.work_dir, out)
    except standing.StandingError as error:
        print(f"relion-spot local: {error}", file=sys.stderr)
        return 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "local",
        help="keep the embedded cloud running for your own data: up, down, status",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=standing.work_dir_default(),
        help=f"its state (and default /data) (default ${standing.WORK_DIR_ENV} or .local/standing)",
    )
    parser.add_argument("--data", type=Path, help="up: your folder as the cluster's /data")
    parser.add_argument("--gpus", type=int, default=1, help="up: GPUs per node (default 1)")
    parser.set_defaults(func=run)
