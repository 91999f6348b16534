"""A running job's progress, reported into its submission's item in the intake table.

The drainer starts every job with ``RELION_SPOT_SUBMISSION_ID``, ``RELION_SPOT_INTAKE_TABLE`` and
``RELION_SPOT_INTAKE_REGION`` in its environment (from sbatch's environment). While RELION runs, the
progress watcher (relion_spot.relion.progress) hands each new progress record to
``ProgressReporter.publish``, which sets two attributes of that item with one UpdateItem, only
where the item exists:

    progress  M  state ("RUNNING", "FINISHED", or "STOPPED": RELION exited before the last
                 iteration, e.g. a spot reclaim that Slurm will requeue), job_id,
                 current_iteration, requested_iterations, resolution_angstrom, eta_seconds,
                 seconds_per_iteration, resumes, resumed_from, updated, and ``history``: one
                 list per iteration, [iteration, resolution Å, changed-class fraction,
                 [class distribution ...]], enough to redraw the convergence plot
    log_tail  S  the last lines of the job's output file (at most LOG_TAIL_BYTES)

This is what ``relion-spot status``, ``logs`` and ``plot`` read: the user's AWS credentials
reach it, no file system does. Each newly completed iteration's resolution is also published as
the metric ``RelionSpot/ResolutionAngstrom`` (dimensions Cluster, JobId) for the cluster's
dashboard, when the job knows its cluster (``RELION_SPOT_CLUSTER``, the controller's). A
report that fails is a warning on the job's stderr and nothing more: progress must never take
the job down.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import KEY, REGION_ENV, SUBMISSION_ID_ENV, TABLE_ENV

CLUSTER_ENV = "RELION_SPOT_CLUSTER"
METRIC_NAMESPACE = "RelionSpot"
RESOLUTION_METRIC = "ResolutionAngstrom"

log = logging.getLogger(__name__)

JOB_LOG_ENV = "RELION_SPOT_JOB_LOG"
"""The job's output file; default ``class3d-<job id>.out`` in the working directory, which is
the project directory (the template's ``--chdir`` and ``--output``)."""
JOB_LOG_NAME = "class3d-{job_id}.out"
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 8192
RUNNING = "RUNNING"
FINISHED = "FINISHED"
STOPPED = "STOPPED"
SUMMARY_FIELDS = (
    "current_iteration",
    "requested_iterations",
    "resolution_angstrom",
    "eta_seconds",
    "seconds_per_iteration",
    "resumes",
    "resumed_from",
    "updated",
)


def attribute(value: Any) -> dict[str, Any]:
    """A plain value as a DynamoDB attribute value (numbers as text, as the API wants)."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": repr(value) if isinstance(value, float) else str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, Mapping):
        return {"M": {str(k): attribute(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [attribute(v) for v in value]}
    raise TypeError(f"no DynamoDB form for {type(value).__name__}")


def _rounded(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def compact(record: Mapping[str, Any], *, state: str, job_id: str = "") -> dict[str, Any]:
    """The progress map stored in the table, from relion_spot.relion.progress.collect's record."""
    summary = {name: record.get(name) for name in SUMMARY_FIELDS}
    summary["state"] = state
    if job_id:
        summary["job_id"] = job_id
    summary["history"] = [
        [
            row["iteration"],
            _rounded(row.get("resolution_angstrom"), 3),
            _rounded(row.get("changed_class_fraction"), 4),
            [_rounded(share, 4) for share in row.get("class_distribution") or []],
        ]
        for row in record.get("iterations") or []
    ]
    return summary


def expand(progress: Mapping[str, Any]) -> dict[str, Any]:
    """The stored map back as a progress record (the shape relion_spot.relion.progress.plot
    draws)."""
    rows = []
    for entry in progress.get("history") or []:
        iteration, resolution, changed, shares = [*entry, None, None, None, []][:4]
        rows.append(
            {
                "iteration": int(iteration),
                "resolution_angstrom": resolution,
                "changed_class_fraction": changed,
                "class_distribution": list(shares or []),
            }
        )
    return {
        "run": f"job {progress.get('job_id', '')}".strip(),
        "current_iteration": progress.get("current_iteration") or 0,
        "requested_iterations": progress.get("requested_iterations") or 0,
        "resumes": progress.get("resumes") or 0,
        "resumed_from": list(progress.get("resumed_from") or []),
        "iterations": rows,
    }


def log_tail(path: Path, *, lines: int = LOG_TAIL_LINES, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``lines`` lines of the file, at most ``limit`` bytes of them; "" if unreadable."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(size - limit, 0))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if len(data) == limit and size > limit:
        text = text.split("\n", 1)[-1]  # drop the cut first line
    kept = "\n".join(text.splitlines()[-lines:])
    while len(kept.encode()) > limit:
        kept = kept.split("\n", 1)[1] if "\n" in kept else kept[-(limit // 4) :]
    return kept


@dataclass
class ProgressReporter:
    table: str
    submission_id: str
    region: str | None = None
    job_id: str = ""
    log_path: Path | None = None
    client: Any = None
    cluster: str = ""
    metrics: Any = None
    """The CloudWatch client (made on first use)."""
    _warned: str = field(default="", repr=False)
    _published_iteration: int = field(default=0, repr=False)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, cwd: Path | None = None
    ) -> ProgressReporter | None:
        """The reporter for a job the intake submitted; None for any other run."""
        table = env.get(TABLE_ENV, "").strip()
        submission_id = env.get(SUBMISSION_ID_ENV, "").strip()
        if not table or not submission_id:
            return None
        job_id = env.get("SLURM_JOB_ID", "").strip()
        log_path = env.get(JOB_LOG_ENV, "").strip()
        where = Path(log_path) if log_path else None
        if where is None and job_id:
            where = (cwd or Path.cwd()) / JOB_LOG_NAME.format(job_id=job_id)
        return cls(
            table=table,
            submission_id=submission_id,
            region=env.get(REGION_ENV, "").strip() or None,
            job_id=job_id,
            log_path=where,
            cluster=env.get(CLUSTER_ENV, "").strip(),
        )

    def _client(self, service: str = "dynamodb") -> Any:
        import boto3
        from botocore.config import Config

        # Short: the final report runs as the job ends, and must not hold it up for long.
        config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
        session = boto3.session.Session(region_name=self.region)
        if service == "cloudwatch":
            if self.metrics is None:
                self.metrics = session.client("cloudwatch", config=config)
            return self.metrics
        if self.client is None:
            self.client = session.client("dynamodb", config=config)
        return self.client

    def publish_resolution(self, record: Mapping[str, Any]) -> bool:
        """The resolution of a newly completed iteration as a metric; False if none was sent."""
        iteration = int(record.get("current_iteration") or 0)
        resolution = record.get("resolution_angstrom")
        if not self.cluster or iteration <= self._published_iteration or resolution is None:
            return False
        try:
            self._client("cloudwatch").put_metric_data(
                Namespace=METRIC_NAMESPACE,
                MetricData=[
                    {
                        "MetricName": RESOLUTION_METRIC,
                        "Dimensions": [
                            {"Name": "Cluster", "Value": self.cluster},
                            {"Name": "JobId", "Value": self.job_id or "?"},
                        ],
                        "Value": float(resolution),
                    }
                ],
            )
        except Exception as err:  # never the job's problem
            print(
                f"progress: resolution metric not published: {type(err).__name__}", file=sys.stderr
            )
            return False
        self._published_iteration = iteration
        return True

    def publish(self, record: Mapping[str, Any], *, state: str) -> bool:
        """Set the item's progress and log tail; False (and a warning) when that failed."""
        try:
            progress = compact(record, state=state, job_id=self.job_id)
            tail = log_tail(self.log_path) if self.log_path is not None else ""
            client = self._client()
            client.update_item(
                TableName=self.table,
                Key={KEY: {"S": self.submission_id}},
                UpdateExpression="SET #p = :p, #t = :t",
                ConditionExpression="attribute_exists(#k)",
                ExpressionAttributeNames={"#p": "progress", "#t": "log_tail", "#k": KEY},
                ExpressionAttributeValues={":p": attribute(progress), ":t": {"S": tail}},
            )
        except Exception as err:  # never the job's problem
            text = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            if text != self._warned:
                self._warned = text
                print(
                    f"progress: not reported to intake table {self.table} for submission "
                    f"{self.submission_id}: {text}",
                    file=sys.stderr,
                )
            return False
        self._warned = ""
        self.publish_resolution(record)
        return True
