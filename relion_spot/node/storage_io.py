"""Meter the bytes a job moved to and from the shared file system, for its cost.

Run by Slurm as the node's Prolog (``start``) and Epilog (``end``). The meter is the node's own
NFS client: ``/proc/self/mountstats`` counts, per mount, the bytes the client read from and
wrote to the server (``bytes:`` fields 5 and 6, "server bytes"), which is what EFS meters and
bills in Elastic throughput. The Prolog keeps the counters of the shared mounts; the Epilog
publishes the difference as two metrics with the job's id, timestamped at the Prolog, for the
cost function to price. A GPU node runs one job at a time, so the difference is the job's own
traffic (SIF reads and spot-notice lines included), which the file system's CloudWatch metrics
could not give: those count every cluster of the deployment and the controller's state saves.

A reclaim ends the job through the spot watcher's requeue within the two-minute notice, so the
Epilog still runs on the reclaimed node. On a mount that is not NFS (the embedded cloud's bind
mounts) there is nothing to meter and nothing is published: the cost then shows the I/O as
unmetered rather than as free. Like the other Prolog/Epilog steps it never fails the job.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cost.storage_io import READ_METRIC, WRITE_METRIC
from ..intake.report import METRIC_NAMESPACE

log = logging.getLogger("relion_spot.node.storage_io")

ACTIONS = ("start", "end")
SHARED_MOUNTS = ("/data", "/containers")
"""The EFS access points a job's processes touch (the node's /slurm state is not mounted)."""
MOUNTSTATS = Path("/proc/self/mountstats")
STATE_DIR_ENV = "RELION_SPOT_STORAGE_IO_DIR"
DEFAULT_STATE_DIR = Path("/run/relion-spot/storage-io")
CLUSTER_ENV = "RELION_SPOT_CLUSTER"
NFS_TYPES = ("nfs", "nfs4")
SERVER_READ_FIELD = 4
SERVER_WRITE_FIELD = 5
"""0-based positions in a ``bytes:`` line: normal read/write, direct read/write, then server
read/write bytes (the kernel's nfs_iostat order)."""


class MountstatsError(ValueError):
    pass


@dataclass(frozen=True)
class Counters:
    read_bytes: int
    write_bytes: int
    mounts: tuple[str, ...]

    def minus(self, earlier: Counters) -> Counters:
        return Counters(
            self.read_bytes - earlier.read_bytes,
            self.write_bytes - earlier.write_bytes,
            self.mounts,
        )


def parse_mountstats(text: str) -> dict[str, tuple[int, int]]:
    """Server bytes (read, written) of every NFS mount, by mount point."""
    found: dict[str, tuple[int, int]] = {}
    mount: str | None = None
    for line in text.splitlines():
        words = line.split()
        if line.startswith("device "):
            # device SERVER:/PATH mounted on MOUNTPOINT with fstype TYPE [statvers=...]
            try:
                at = words.index("mounted")
                kind = words[words.index("fstype") + 1]
            except (ValueError, IndexError):
                raise MountstatsError(f"unexpected mountstats line {line!r}") from None
            mount = words[at + 2] if kind in NFS_TYPES else None
        elif mount is not None and words[:1] == ["bytes:"]:
            fields = words[1:]
            if len(fields) <= SERVER_WRITE_FIELD or not all(f.isdigit() for f in fields):
                raise MountstatsError(f"{mount}: unexpected bytes line {line.strip()!r}")
            found[mount] = (int(fields[SERVER_READ_FIELD]), int(fields[SERVER_WRITE_FIELD]))
            mount = None
    return found


def shared_counters(text: str, mounts: Iterable[str] = SHARED_MOUNTS) -> Counters | None:
    """The summed counters of the shared mounts; None when none of them is an NFS mount."""
    stats = parse_mountstats(text)
    metered = sorted(m for m in mounts if m in stats)
    if not metered:
        return None
    return Counters(
        sum(stats[m][0] for m in metered), sum(stats[m][1] for m in metered), tuple(metered)
    )


def _state_file(env: Mapping[str, str], job_id: str) -> Path:
    base = Path(env.get(STATE_DIR_ENV, "").strip() or DEFAULT_STATE_DIR)
    return base / f"{job_id}.json"


def start(env: Mapping[str, str], mountstats: str, *, now: float) -> str:
    """Keep the counters as the job starts on this node."""
    job_id = env.get("SLURM_JOB_ID", "").strip()
    if not job_id:
        return "no SLURM_JOB_ID in the environment: nothing metered"
    counters = shared_counters(mountstats)
    if counters is None:
        return f"job {job_id}: no NFS mount among {', '.join(SHARED_MOUNTS)}: nothing metered"
    path = _state_file(env, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "started": now,
                "read_bytes": counters.read_bytes,
                "write_bytes": counters.write_bytes,
                "mounts": list(counters.mounts),
            }
        )
    )
    return f"job {job_id}: counters kept for {', '.join(counters.mounts)}"


def end(env: Mapping[str, str], mountstats: str, cloudwatch: Any) -> str:
    """Publish what the job moved since its Prolog, as two metrics timestamped at the Prolog."""
    job_id = env.get("SLURM_JOB_ID", "").strip()
    cluster = env.get(CLUSTER_ENV, "").strip()
    if not job_id or not cluster:
        return "no SLURM_JOB_ID or cluster in the environment: nothing metered"
    path = _state_file(env, job_id)
    if not path.is_file():
        return f"job {job_id}: no counters from its start on this node: nothing metered"
    kept = json.loads(path.read_text())
    before = Counters(int(kept["read_bytes"]), int(kept["write_bytes"]), tuple(kept["mounts"]))
    now = shared_counters(mountstats, before.mounts)
    if now is None or now.mounts != before.mounts:
        return f"job {job_id}: the shared mounts changed during the job: nothing metered"
    moved = now.minus(before)
    if moved.read_bytes < 0 or moved.write_bytes < 0:
        return f"job {job_id}: the counters went back (remount): nothing metered"
    dimensions = [{"Name": "Cluster", "Value": cluster}, {"Name": "JobId", "Value": job_id}]
    started = float(kept["started"])
    cloudwatch.put_metric_data(
        Namespace=METRIC_NAMESPACE,
        MetricData=[
            {
                "MetricName": name,
                "Dimensions": dimensions,
                "Timestamp": started,
                "Value": float(value),
                "Unit": "Bytes",
            }
            for name, value in ((READ_METRIC, moved.read_bytes), (WRITE_METRIC, moved.write_bytes))
        ],
    )
    path.unlink()
    return (
        f"job {job_id}: {moved.read_bytes} bytes read, {moved.write_bytes} written "
        "on the shared file system"
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cloudwatch: Any = None,
    mountstats_path: Path = MOUNTSTATS,
) -> int:
    logging.basicConfig(level=logging.INFO, format="relion-spot storage-io: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in ACTIONS:
        log.error("usage: storage_io start|end (got %s)", " ".join(args) or "nothing")
        return 2
    env = os.environ if environ is None else environ
    try:
        text = mountstats_path.read_text()
        if args[0] == "start":
            log.info("%s", start(env, text, now=time.time()))
            return 0
        if cloudwatch is None:
            import boto3
            from botocore.config import Config

            cloudwatch = boto3.client(
                "cloudwatch", config=Config(connect_timeout=5, read_timeout=10)
            )
        log.info("%s", end(env, text, cloudwatch))
    except Exception as err:  # an Epilog must not drain the node over a meter
        log.warning("storage I/O not metered: %s: %s", type(err).__name__, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
