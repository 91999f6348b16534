"""The embedded cloud kept running for a lab's own work: ``relion-spot local up | down | status``.

``up`` starts a detached process (``python -m relion_spot.local.standing serve``) that holds
the embedded cloud (relion_spot.local.embedded) open until ``down``: moto, the controller
container, the reconciler and its metadata service. In moto it also creates what a deployment
creates for the lab's commands, a CloudFormation stack ``local`` with the cluster stack's
outputs, so ``submit``, ``status``, ``logs``, ``cancel`` and ``plot`` with ``--stack local`` run
the deployed cluster's code path unchanged; only their AWS endpoint is moto's (boto3's
``AWS_ENDPOINT_URL``). The cost function's schedule runs every minute, pricing at the on-demand
ceiling (moto's spot market quotes a placeholder). The lab's data directory is the cluster's
/data (``--data``; default ``<work dir>/data``).

The process holds an exclusive lock on ``<work dir>/standing.lock`` (its pid inside) from its
start to its end: that lock, not a pid that may be reused, says whether it runs, and a second
one for the same work directory refuses to start. The state file ``<work dir>/standing.json``
says where it runs (endpoint, region, process, data); it exists while the cloud is up.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import __version__

STACK = "local"
WORK_DIR_ENV = "RELION_SPOT_LOCAL_WORK_DIR"
DEFAULT_WORK_DIR = Path(__file__).resolve().parents[2] / ".local" / "standing"


def work_dir_default() -> Path:
    """Where the standing cloud keeps its state (and, without --data, its /data)."""
    return Path(os.environ.get(WORK_DIR_ENV, "").strip() or DEFAULT_WORK_DIR)


STATE_FILE = "standing.json"
LOCK_FILE = "standing.lock"
LOG_FILE = "standing.log"
PREFIX = "relion-spot-local"
COST_EVERY_SECONDS = 60.0
SUSPEND_SECONDS = 120
"""How long an idle node of the standing cloud lives (the deployed minimum is 60)."""
PLACEHOLDER_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
"""moto's: the standing cloud checks none."""

log = logging.getLogger("relion_spot.local.standing")


class StandingError(RuntimeError):
    """The standing cloud is not up, or could not be started or stopped; one line."""


@dataclass(frozen=True)
class Standing:
    """Where a standing embedded cloud runs."""

    endpoint: str
    region: str
    pid: int
    data_dir: str
    cluster: str
    started_at: float

    @classmethod
    def read(cls, work_dir: Path) -> Standing | None:
        try:
            raw = json.loads((work_dir / STATE_FILE).read_text())
            return cls(**raw)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as err:
            raise StandingError(f"{work_dir / STATE_FILE} is not a state file: {err}") from None

    def alive(self, work_dir: Path) -> bool:
        return holder(work_dir) == self.pid


def holder(work_dir: Path) -> int | None:
    """The pid of the process that holds the work directory's lock; None when none does."""
    try:
        fd = os.open(work_dir / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(fd, 32).decode("ascii", errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)  # also releases a lock taken here
    return None


def prefix_for(work_dir: Path) -> str:
    """The containers' name prefix: named by the work directory, so two standing clouds on one
    machine never share containers."""
    from .embedded import named_by

    return named_by(PREFIX, work_dir)


def remove_leftovers(work_dir: Path) -> None:
    """The containers and network of a standing cloud whose process is gone (killed, crashed)."""
    from ..slurm.local import LABEL, docker

    prefix = prefix_for(work_dir)
    listed = docker("ps", "-aq", "--filter", f"label={LABEL}={prefix}", check=False)
    if listed.stdout.split():
        docker("rm", "-f", *listed.stdout.split(), check=False)
    docker("network", "rm", f"{prefix}-net", check=False)


def running(work_dir: Path | None = None) -> Standing:
    """The standing cloud, or StandingError saying how to start it."""
    work_dir = work_dir or work_dir_default()
    found = Standing.read(work_dir)
    if found is None or not found.alive(work_dir):
        raise StandingError("the embedded cloud is not running: start it with relion-spot local up")
    return found


def session(work_dir: Path | None = None) -> Any:
    """A boto3 session on the standing cloud's moto; its clients' endpoint comes from
    ``AWS_ENDPOINT_URL``, set here for this process (boto3 reads it for every client)."""
    import boto3

    found = running(work_dir)
    os.environ["AWS_ENDPOINT_URL"] = found.endpoint
    return boto3.session.Session(
        aws_access_key_id=PLACEHOLDER_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=PLACEHOLDER_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=found.region,
    )


def stack_outputs(cloud: Any) -> dict[str, str]:
    """The cluster stack's outputs the lab's commands read (relion_spot.client.cluster)."""
    from ..intake import config as intake_config
    from ..local import embedded
    from ..node import stage_credentials
    from ..slurm.idle import CLUSTER_ENV, SERVICE_ENV

    return {
        "ClusterName": cloud.cluster,
        "Version": __version__,
        "IntakeQueueUrl": cloud.env[intake_config.QUEUE_URL_ENV],
        "IntakeTable": embedded.INTAKE_TABLE,
        "JobCostsTable": embedded.COSTS_TABLE,
        "JobRecordsTable": embedded.RECORDS_TABLE,
        "EcsClusterName": cloud.env[CLUSTER_ENV],
        "ControllerServiceName": cloud.env[SERVICE_ENV],
        "MonthlyBudgetUsd": "none",
        "ExchangeBucket": cloud.env[stage_credentials.EXCHANGE_BUCKET_ENV],
    }


def _create_stack(cloud: Any) -> None:
    template = {
        "Resources": {"Handle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {k: {"Value": v} for k, v in stack_outputs(cloud).items()},
    }
    cloud.client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(template))


def _price_loop(cloud: Any, stop: threading.Event) -> None:
    """The cost function's schedule, as its hourly rule runs it, every minute."""
    from ..cost.handler import handle

    while not stop.wait(COST_EVERY_SECONDS):
        try:
            handle({"action": "schedule"}, cloud.cost_service())
        except Exception as err:  # the next minute tries again; the cloud stays up
            log.warning("pricing failed: %s", err)


@contextmanager
def _state(work_dir: Path, standing: Standing) -> Iterator[None]:
    path = work_dir / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(standing), indent=2) + "\n")
    os.replace(temporary, path)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def serve(work_dir: Path, data_dir: Path | None, gpus: int) -> int:
    """Hold the embedded cloud open until SIGTERM or SIGINT."""
    from ..demo.runner import DemoError, ensure_images
    from ..local.embedded import EmbeddedCloud
    from ..settings import Settings

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(work_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error("another process runs the embedded cloud of %s", work_dir)
        return 1
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())
    try:
        ensure_images()
    except DemoError as err:
        log.error("%s", err)
        return 1
    with EmbeddedCloud.start(
        prefix=prefix_for(work_dir),
        settings=Settings(gpus=(gpus,)),
        gpu_count=gpus,
        work_dir=work_dir,
        data_dir=data_dir,
        suspend_time=SUSPEND_SECONDS,
    ) as cloud:
        _create_stack(cloud)
        standing = Standing(
            endpoint=cloud.endpoint,
            region=cloud.region,
            pid=os.getpid(),
            data_dir=str((data_dir or work_dir / "data").resolve()),
            cluster=cloud.cluster,
            started_at=time.time(),
        )
        pricing = threading.Thread(target=_price_loop, args=(cloud, stop), daemon=True)
        pricing.start()
        with _state(work_dir, standing):
            log.info("up: relion-spot commands reach it with --stack %s", STACK)
            stop.wait()
            log.info("stopping")
        pricing.join(timeout=COST_EVERY_SECONDS)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relion_spot.local.standing")
    sub = parser.add_subparsers(dest="command", required=True)
    served = sub.add_parser("serve")
    served.add_argument("--work-dir", type=Path, required=True)
    served.add_argument("--data", type=Path)
    served.add_argument("--gpus", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return serve(args.work_dir, args.data, args.gpus)


if __name__ == "__main__":
    sys.exit(main())
