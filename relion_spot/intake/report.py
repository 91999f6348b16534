"""A running job's progress, reported into its submission's item in the intake table.

Jobs hold no AWS credentials (the node shuts the metadata service to them:
relion_spot.node.metadata_guard), so reporting takes two hands:

- the job (``ProgressReporter``, used by relion_spot.relion.progress's watcher): in a job the
  intake submitted (``RELION_SPOT_SUBMISSION_ID`` in its environment), each progress record is
  written as a report file, ``<job id>.json``, into the node's report spool (``REPORT_SPOOL``,
  root's directory, which jobs may add to but not list): the compact progress map and the last
  lines of the job's output file;
- the node's forwarder (relion_spot.node.job_reports, root, started beside slurmd): for each
  job Slurm runs on the node, reads that file (no link followed, owned by the job's user,
  bounded) and puts it into the node's own report item, ``report:<instance ARN>:<submission
  id>`` (``ReportPublisher``, ``report_put``): IAM lets a node put no other key
  (relion_spot.constructs.intake, tests/iam). The submission comes from the job's Slurm
  comment, never from the file;
- the controller's relay (relion_spot.intake.relay): copies each report into its submission's
  item once Slurm says that job runs (or ran) on that instance, where the item's
  ``report_job_id`` (written by the drainer with the decision) names the job. So neither a job
  nor a node can write a submission's item, and a node can report only for its own jobs:

    progress  M  state ("RUNNING", "FINISHED", or "STOPPED": RELION exited before the last
                 iteration, e.g. a spot reclaim that Slurm will requeue; "FAILED": a CPU job's
                 program failed), job_id,
                 current_iteration, requested_iterations, resolution_angstrom, eta_seconds,
                 seconds_per_iteration, resumes, resumed_from, updated, and ``history``: one
                 list per iteration, [iteration, resolution Å, changed-class fraction,
                 [class distribution ...]], enough to redraw the convergence plot, and
                 ``classes``: per class of the newest iteration [share, resolution Å,
                 angular accuracy °, offset accuracy Å], and ``truth_accuracy``: on a
                 ground-truthed set (relion_spot.relion.synthetic), the fraction of particles
                 in their true class at the newest iteration (None elsewhere)
    log_tail  S  the last lines of the job's output file (at most LOG_TAIL_BYTES)

This is what ``relion-spot status``, ``logs`` and ``plot`` read: the user's AWS credentials
reach it, no file system does. Each newly completed iteration's resolution is also published as
the metric ``RelionSpot/ResolutionAngstrom`` (dimensions Cluster, JobId) for the cluster's
dashboard. A report that fails is a warning and nothing more: progress must never take the job
down.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    KEY,
    LOG_TAIL,
    PROGRESS,
    REPORT_EXPIRES,
    REPORT_JOB,
    REPORT_RETURN_VALUES,
    REPORT_TTL_SECONDS,
    SUBMISSION_ID_ENV,
    report_key,
)

CLUSTER_ENV = "RELION_SPOT_CLUSTER"
REPORT_SPOOL = Path("/run/relion-spot/job-reports")
"""The node's report spool: root's, mode 1733 (the node entrypoint makes it)."""
SPOOL_ENV = "RELION_SPOT_REPORT_SPOOL"
"""Another spool directory (tests); the node's is ``REPORT_SPOOL``."""
MAX_REPORT_BYTES = 131072
"""A report is a compact progress map (with at most ~50 KB of class slices) and a log tail of at
most 8 KiB; anything larger is not a report (and would crowd the item towards DynamoDB's
400 KB)."""
METRIC_NAMESPACE = "RelionSpot"
RESOLUTION_METRIC = "ResolutionAngstrom"

log = logging.getLogger(__name__)

POLL_SECONDS_ENV = "RELION_SPOT_REPORT_POLL_SECONDS"
"""How often the node's forwarder and the controller's relay look for new reports."""
DEFAULT_POLL_SECONDS = 5.0


def poll_seconds(env: Mapping[str, str]) -> float | None:
    """``POLL_SECONDS_ENV`` (default ``DEFAULT_POLL_SECONDS``); None, with one logged line
    naming the value and what is accepted, when it is not 0.1 to 300 seconds."""
    raw = env.get(POLL_SECONDS_ENV, "").strip() or str(DEFAULT_POLL_SECONDS)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0
    if not 0.1 <= seconds <= 300:
        log.error("%s = %r: give seconds from 0.1 to 300", POLL_SECONDS_ENV, raw)
        return None
    return seconds


JOB_LOG_ENV = "RELION_SPOT_JOB_LOG"
"""The job's output file; default ``class3d-<job id>.out`` in the working directory, which is
the project directory (the template's ``--chdir`` and ``--output``)."""
JOB_LOG_NAME = "class3d-{job_id}.out"
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 8192
RUNNING = "RUNNING"
FINISHED = "FINISHED"
STOPPED = "STOPPED"
FAILED = "FAILED"
MAX_CLASSES = 100
"""More classes than any classification asks for (RELION's K is a handful)."""
SUMMARY_FIELDS = (
    "current_iteration",
    "requested_iterations",
    "resolution_angstrom",
    "eta_seconds",
    "seconds_per_iteration",
    "resumes",
    "resumed_from",
    "updated",
    "truth_accuracy",
    "bfactor",
    "truth_resolution_angstrom",
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
    newest = (record.get("iterations") or [{}])[-1]
    shares = newest.get("class_distribution") or []
    if isinstance(record.get("class_slices"), Mapping):
        summary["class_slices"] = dict(record["class_slices"])
    summary["classes"] = [
        [
            _rounded(share, 4),
            *(
                _rounded(figures[k] if k < len(figures) else None, 2)
                for figures in (
                    newest.get("class_resolution_angstrom") or [],
                    newest.get("class_accuracy_rotation_deg") or [],
                    newest.get("class_accuracy_translation_angstrom") or [],
                )
            ),
        ]
        for k, share in enumerate(shares)
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


class ReportError(ValueError):
    """A report file that is not one; the message says why."""


STATES = (RUNNING, FINISHED, STOPPED, FAILED)


@dataclass(frozen=True)
class JobReport:
    """What a job reports: its compact progress map (``compact``) and its log tail."""

    progress: dict[str, Any]
    log_tail: str

    def to_json(self) -> str:
        return json.dumps({"progress": self.progress, "log_tail": self.log_tail})

    @classmethod
    def from_json(cls, data: bytes) -> JobReport:
        """Parse and check a report file's bytes; ReportError if they are not a report."""
        if len(data) > MAX_REPORT_BYTES:
            raise ReportError(f"{len(data)} bytes, more than {MAX_REPORT_BYTES}")
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise ReportError(f"not JSON ({err})") from None
        if not isinstance(raw, dict) or set(raw) != {"progress", "log_tail"}:
            raise ReportError("expected an object with exactly progress and log_tail")
        progress, tail = raw["progress"], raw["log_tail"]
        if not isinstance(progress, dict) or not isinstance(tail, str):
            raise ReportError("progress must be an object and log_tail a string")
        if progress.get("state") not in STATES:
            raise ReportError(f"state {progress.get('state')!r} is not one of {STATES}")
        unknown = set(progress) - {
            *SUMMARY_FIELDS,
            "state",
            "job_id",
            "history",
            "classes",
            "class_slices",
        }
        if unknown:
            raise ReportError(f"unknown progress fields {sorted(unknown)}")
        classes = progress.get("classes", [])
        if (
            not isinstance(classes, list)
            or len(classes) > MAX_CLASSES
            or not all(
                isinstance(row, list)
                and len(row) == 4
                and all(v is None or type(v) in (int, float) for v in row)
                for row in classes
            )
        ):
            raise ReportError(
                f"classes must be at most {MAX_CLASSES} lists of four numbers (or nulls)"
            )
        if "class_slices" in progress:
            _check_class_slices(progress["class_slices"])
        for name in ("current_iteration", "requested_iterations"):
            value = progress.get(name)
            if value is not None and (type(value) is not int or not 0 <= value < 10**6):
                raise ReportError(f"{name} = {value!r} is not an iteration count")
        resolution = progress.get("resolution_angstrom")
        if resolution is not None and (
            type(resolution) not in (int, float) or not 0 < resolution < 10**4
        ):
            raise ReportError(f"resolution_angstrom = {resolution!r} is not a resolution")
        for name in ("bfactor", "truth_resolution_angstrom"):
            figure = progress.get(name)
            if figure is not None and (
                type(figure) not in (int, float) or not math.isfinite(figure)
                or not -(10**4) < figure < 10**4
            ):  # fmt: skip
                raise ReportError(f"{name} = {figure!r} is not a figure")
        accuracy = progress.get("truth_accuracy")
        if accuracy is not None and (type(accuracy) not in (int, float) or not 0 <= accuracy <= 1):
            raise ReportError(f"truth_accuracy = {accuracy!r} is not a fraction")
        try:
            attribute(progress)
        except TypeError as err:
            raise ReportError(str(err)) from None
        return cls(progress, tail)


def _check_class_slices(value: Any) -> None:
    """The class pictures' slices as relion_spot.relion.progress.thumbnails makes them."""
    import base64
    import binascii

    from relion_spot.relion.progress import MAX_THUMBNAIL_CLASSES, THUMBNAIL_PIXELS, VIEWS

    shape = (
        f"class_slices must be at most {MAX_THUMBNAIL_CLASSES} classes of 1 or 3 views of "
        f"{THUMBNAIL_PIXELS}x{THUMBNAIL_PIXELS} pixels"
    )
    if (
        not isinstance(value, dict)
        or set(value) != {"iteration", "views", "pixels", "slices"}
        or type(value["iteration"]) is not int
        or value["pixels"] != THUMBNAIL_PIXELS
        or value["views"] not in (list(VIEWS[:1]), list(VIEWS))
        or not isinstance(value["slices"], list)
        or not 0 < len(value["slices"]) <= MAX_THUMBNAIL_CLASSES
    ):
        raise ReportError(shape)
    for row in value["slices"]:
        if not isinstance(row, list) or len(row) != len(value["views"]):
            raise ReportError(shape)
        for text in row:
            try:
                pixels = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
            except (binascii.Error, ValueError):
                pixels = b""
            if len(pixels) != THUMBNAIL_PIXELS**2:
                raise ReportError(shape)


@dataclass
class ProgressReporter:
    """The job's side: each progress record becomes the job's report file in the spool."""

    submission_id: str
    job_id: str
    log_path: Path | None = None
    spool: Path = REPORT_SPOOL
    _warned: str = field(default="", repr=False)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, cwd: Path | None = None
    ) -> ProgressReporter | None:
        """The reporter for a job the intake submitted; None for any other run."""
        submission_id = env.get(SUBMISSION_ID_ENV, "").strip()
        job_id = env.get("SLURM_JOB_ID", "").strip()
        if not submission_id or not job_id.isdigit():
            return None
        log_path = env.get(JOB_LOG_ENV, "").strip()
        where = Path(log_path) if log_path else None
        if where is None:
            where = (cwd or Path.cwd()) / JOB_LOG_NAME.format(job_id=job_id)
        spool = env.get(SPOOL_ENV, "").strip()
        return cls(
            submission_id=submission_id,
            job_id=job_id,
            log_path=where,
            spool=Path(spool) if spool else REPORT_SPOOL,
        )

    @property
    def path(self) -> Path:
        return self.spool / f"{self.job_id}.json"

    def publish(self, record: Mapping[str, Any], *, state: str) -> bool:
        """Replace the job's report file; False (and a warning) when that failed."""
        report = JobReport(
            compact(record, state=state, job_id=self.job_id),
            log_tail(self.log_path) if self.log_path is not None else "",
        )
        partial = self.spool / f".{self.job_id}.{os.getpid()}.partial"
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(report.to_json())
            os.replace(partial, self.path)
        except OSError as err:
            partial.unlink(missing_ok=True)
            text = f"{type(err).__name__}: {err}"
            if text != self._warned:
                self._warned = text
                print(f"progress: not reported to the node ({self.path}): {text}", file=sys.stderr)
            return False
        self._warned = ""
        return True


@dataclass
class ReportPublisher:
    """The node's side (root): a job's report into this instance's report item for its
    submission, and its resolution as a metric once per new iteration."""

    table: str
    instance_arn: str
    """This node's instance ARN, as AWS puts it in ``ec2:SourceInstanceARN`` (``instance_arn``)."""
    region: str | None = None
    cluster: str = ""
    client: Any = None
    metrics: Any = None
    """The CloudWatch client (made on first use)."""
    clock: Callable[[], float] = time.time
    _published_iteration: dict[str, int] = field(default_factory=dict, repr=False)

    def _client(self, service: str = "dynamodb") -> Any:
        import boto3
        from botocore.config import Config

        # Short: one slow call must not hold up the reports of the node's other jobs.
        config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
        session = boto3.session.Session(region_name=self.region)
        if service == "cloudwatch":
            if self.metrics is None:
                self.metrics = session.client("cloudwatch", config=config)
            return self.metrics
        if self.client is None:
            self.client = session.client("dynamodb", config=config)
        return self.client

    def publish_resolution(self, job_id: str, progress: Mapping[str, Any]) -> bool:
        """The resolution of a newly completed iteration as a metric; False if none was due."""
        iteration = int(progress.get("current_iteration") or 0)
        resolution = progress.get("resolution_angstrom")
        due = iteration > self._published_iteration.get(job_id, 0)
        if not self.cluster or not due or resolution is None:
            return False
        self._client("cloudwatch").put_metric_data(
            Namespace=METRIC_NAMESPACE,
            MetricData=[
                {
                    "MetricName": RESOLUTION_METRIC,
                    "Dimensions": [
                        {"Name": "Cluster", "Value": self.cluster},
                        {"Name": "JobId", "Value": job_id},
                    ],
                    "Value": float(resolution),
                }
            ],
        )
        self._published_iteration[job_id] = iteration
        return True

    def publish(self, submission_id: str, job_id: str, report: JobReport) -> None:
        """Put Slurm job ``job_id``'s report into this instance's item for ``submission_id``
        (the relay decides whether it reaches the submission). AWS errors are raised."""
        expires = int(self.clock()) + REPORT_TTL_SECONDS
        self._client().put_item(
            **report_put(self.table, self.instance_arn, submission_id, job_id, report, expires)
        )
        self.publish_resolution(job_id, {**report.progress, "job_id": job_id})


def report_put(
    table: str,
    instance_arn: str,
    submission_id: str,
    job_id: str,
    report: JobReport,
    expires: int,
) -> dict[str, Any]:
    """The forwarder's PutItem of Slurm job ``job_id``'s report: its own instance's item for
    the submission, holding ``progress`` (with the job id), ``log_tail``, the job and the
    item's end; it asks nothing back."""
    return {
        "TableName": table,
        "Item": {
            KEY: {"S": report_key(instance_arn, submission_id)},
            PROGRESS: attribute({**report.progress, "job_id": job_id}),
            LOG_TAIL: {"S": report.log_tail},
            REPORT_JOB: {"S": job_id},
            REPORT_EXPIRES: {"N": str(expires)},
        },
        "ReturnValues": REPORT_RETURN_VALUES,
    }


def instance_arn(imds: Any) -> str:
    """This instance's ARN from its metadata (partition, region, account, id): the value AWS
    gives ``ec2:SourceInstanceARN`` in a request made with the instance's role. ImdsError
    where the metadata service does not answer; ReportError where it lacks a part."""
    parts = {
        "partition": imds.get("services/partition"),
        "region": imds.get("placement/region"),
        "instance id": imds.get("instance-id"),
    }
    info = imds.get("identity-credentials/ec2/info")
    try:
        parts["account"] = str(json.loads(info or "{}").get("AccountId") or "")
    except (json.JSONDecodeError, AttributeError):
        parts["account"] = ""
    missing = sorted(name for name, value in parts.items() if not (value or "").strip())
    if missing:
        raise ReportError(f"the instance metadata names no {', '.join(missing)}")
    clean = {name: value.strip() for name, value in parts.items() if value}
    return (
        f"arn:{clean['partition']}:ec2:{clean['region']}:{clean['account']}:instance/"
        f"{clean['instance id']}"
    )


def main(argv: list[str] | None = None) -> int:
    """A CPU job's end state as its last word: ``--run PROGRAM ...`` runs the job's program and
    reports FINISHED when it exits 0, FAILED when it exits with an error, exiting with the
    program's status (the CPU job templates run their program so); a program ended by a signal
    was stopped (Slurm cancelling or requeueing the job), which is no end state, so nothing is
    reported. ``--state S`` reports S. Outside a job the intake submitted there is nothing to
    report, and the program's status is all."""
    import argparse
    import subprocess

    parser = argparse.ArgumentParser(
        prog="python -m relion_spot.intake.report",
        description="Report a job's end state into its submission's intake item.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--state", choices=(FINISHED, FAILED))
    what.add_argument("--run", nargs=argparse.REMAINDER, metavar="PROGRAM")
    args = parser.parse_args(argv)
    status = 0
    state = args.state
    if args.run is not None:
        if not args.run:
            parser.error("--run needs the program to run")
        status = subprocess.run(args.run, check=False).returncode
        if status < 0:
            return 128 - status
        state = FINISHED if status == 0 else FAILED
    reporter = ProgressReporter.from_env(os.environ)
    if reporter is not None and not reporter.publish({}, state=state) and args.run is None:
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
