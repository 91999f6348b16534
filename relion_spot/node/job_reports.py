"""Forward what this node's jobs report to AWS, as root: jobs themselves hold no credentials.

    python -I -m relion_spot.node.job_reports      (the node entrypoint starts it beside slurmd)

Every few seconds: ask Slurm which intake jobs run on this node (``squeue --json``: job id, user,
comment ``relion-spot:<submission id>``), read each one's report file from the spool
(relion_spot.intake.report: ``REPORT_SPOOL/<job id>.json``) and, when it changed, publish it into
this node's report item for the submission (``report:<instance ARN>:<submission id>``, whence
the controller's relay copies it into the submission's item: relion_spot.intake.relay) and its
resolution metric (``ReportPublisher``). The spool is
root's; its files are the jobs'. A file is read only when it is a regular file, not a link (opened
O_NOFOLLOW relative to the spool), with one link, owned by the job's user and bounded in size;
anything else is refused with one log line and removed, as are the files of jobs that left.

    python -I -m relion_spot.node.job_reports --job ID     (the Epilog, as the job ends)

forwards that one job's report at once: a job's last word (its final progress, a CPU job's
FINISHED or FAILED) is written just before it exits, and the poll could miss it.

Environment: RELION_SPOT_NODE_NAME, RELION_SPOT_INTAKE_TABLE (without it there is nothing to
forward and it exits 0), the region (AWS_REGION / AWS_DEFAULT_REGION), RELION_SPOT_CLUSTER (the
metric's dimension), RELION_SPOT_REPORT_POLL_SECONDS, RELION_SPOT_IMDS_URL (the instance's
ARN comes from its metadata).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..intake.config import TABLE_ENV
from ..intake.report import (
    CLUSTER_ENV,
    MAX_REPORT_BYTES,
    REPORT_SPOOL,
    SPOOL_ENV,
    JobReport,
    ReportError,
    ReportPublisher,
    instance_arn,
    poll_seconds,
)
from ..intake.slurm import submission_of
from ..slurm import squeue
from ..slurm.squeue import SlurmJob
from .imds import DEFAULT_IMDS_URL, IMDS_URL_ENV, Imds, ImdsError

NODE_NAME_ENV = "RELION_SPOT_NODE_NAME"
SQUEUE_TIMEOUT_SECONDS = 20

log = logging.getLogger("relion_spot.node.job_reports")


@dataclass(frozen=True)
class NodeJob:
    """A job Slurm runs on this node that the intake submitted."""

    job_id: str
    user_id: int
    submission_id: str


def intake_jobs(jobs: list[SlurmJob]) -> list[NodeJob]:
    """The intake's jobs among Slurm's (its comment names the submission)."""
    return [
        NodeJob(job_id=job.job_id, user_id=job.user_id, submission_id=submission_id)
        for job in jobs
        if (submission_id := submission_of(job.comment)) is not None and job.user_id >= 0
    ]


def squeue_node_jobs(node: str) -> list[NodeJob] | None:
    """The intake's jobs running on ``node``, from Slurm; None when squeue did not answer."""
    return _squeue([f"--nodelist={node}", "--states=RUNNING,COMPLETING"])


def squeue_job(job_id: str) -> list[NodeJob] | None:
    """The intake job ``job_id`` while Slurm still runs or completes it (as its Epilog runs)."""
    return _squeue([f"--jobs={job_id}", "--states=RUNNING,COMPLETING"])


def _squeue(selection: list[str]) -> list[NodeJob] | None:
    jobs = squeue.listed(*selection, timeout=SQUEUE_TIMEOUT_SECONDS, log=log)
    return None if jobs is None else intake_jobs(jobs)


def read_report(spool_fd: int, job: NodeJob) -> bytes:
    """The job's report file's bytes, read without following a link; ReportError if the entry
    is anything but a single-link regular file of the job's user within the size bound."""
    name = f"{job.job_id}.json"
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=spool_fd)
    except FileNotFoundError:
        return b""
    except OSError as err:  # ELOOP: a symbolic link
        raise ReportError(f"{name}: not opened ({os.strerror(err.errno or 0)})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReportError(f"{name}: not a regular file")
        if info.st_nlink != 1:
            raise ReportError(f"{name}: has {info.st_nlink} links (a hard link to another file)")
        if info.st_uid != job.user_id:
            raise ReportError(f"{name}: owned by uid {info.st_uid}, not the job's {job.user_id}")
        if info.st_size > MAX_REPORT_BYTES:
            raise ReportError(f"{name}: {info.st_size} bytes, more than {MAX_REPORT_BYTES}")
        return os.read(fd, MAX_REPORT_BYTES + 1)
    finally:
        os.close(fd)


class Forwarder:
    """One node's forwarder: ``round`` once, or ``run`` until stopped."""

    def __init__(
        self,
        *,
        spool: Path,
        publisher: ReportPublisher,
        jobs: Callable[[], list[NodeJob] | None],
    ) -> None:
        self.spool = spool
        self.publisher = publisher
        self.jobs = jobs
        self._sent: dict[str, bytes] = {}
        """Job id -> the report bytes last published for it."""

    def round(self) -> None:
        running = self.jobs()
        if running is None:
            return
        spool_fd = os.open(self.spool, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            self._forward(spool_fd, running)
            self._clear_departed(spool_fd, {job.job_id for job in running})
        finally:
            os.close(spool_fd)

    def flush(self) -> None:
        """One round over ``jobs`` that leaves every other job's file alone (the Epilog's)."""
        running = self.jobs()
        if not running:
            return
        spool_fd = os.open(self.spool, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            self._forward(spool_fd, running)
        finally:
            os.close(spool_fd)

    def _forward(self, spool_fd: int, running: list[NodeJob]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for job in running:
            try:
                data = read_report(spool_fd, job)
                if not data or data == self._sent.get(job.job_id):
                    continue
                report = JobReport.from_json(data)
            except ReportError as err:
                log.warning("job %s: report refused and removed: %s", job.job_id, err)
                _remove(spool_fd, f"{job.job_id}.json")
                continue
            try:
                self.publisher.publish(job.submission_id, job.job_id, report)
            except (BotoCoreError, ClientError) as err:
                log.warning("job %s: report not forwarded, retrying: %s", job.job_id, err)
                continue
            self._sent[job.job_id] = data

    def _clear_departed(self, spool_fd: int, running: set[str]) -> None:
        for name in os.listdir(spool_fd):
            job_id = name.removesuffix(".json").lstrip(".").split(".", 1)[0]
            if job_id not in running:
                _remove(spool_fd, name)
                self._sent.pop(job_id, None)

    def run(self, poll_seconds: float) -> None:
        while True:
            self.round()
            time.sleep(poll_seconds)


def _remove(spool_fd: int, name: str) -> None:
    """Unlink a spool entry (unlink never follows a link)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=spool_fd)


def make_spool(path: Path) -> None:
    """The spool: root's, 1733 (jobs add files, none lists or removes another's)."""
    path.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.lstat().st_uid != 0:
        raise OSError(f"{path} is not root's own directory")
    path.chmod(0o1733)


ARN_RETRY_SECONDS = (1, 2, 5, 10, 30, 60)
"""Waits between asking the metadata service for this instance's identity (then every 60 s)."""


def own_arn(
    imds: Imds,
    *,
    attempts: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """This instance's ARN from its metadata, asked up to ``attempts`` times (None: until it
    answers); None when it never did."""
    tried = 0
    while True:
        try:
            return instance_arn(imds)
        except (ImdsError, ReportError) as err:
            tried += 1
            if attempts is not None and tried >= attempts:
                log.error("no report forwarded: this node's instance ARN is not known: %s", err)
                return None
            wait = ARN_RETRY_SECONDS[min(tried, len(ARN_RETRY_SECONDS)) - 1]
            log.warning("this node's instance ARN is not known yet (%s); asking in %d s", err, wait)
            sleep(wait)


def main(environ: Mapping[str, str] | None = None, argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="relion-spot job-reports: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    env = os.environ if environ is None else environ
    args = sys.argv[1:] if argv is None else argv
    table = env.get(TABLE_ENV, "").strip()
    node = env.get(NODE_NAME_ENV, "").strip()
    if not table:
        log.info("no intake table (%s): nothing to forward", TABLE_ENV)
        return 0
    region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
    imds = Imds(env.get(IMDS_URL_ENV, "").strip() or DEFAULT_IMDS_URL)
    # The Epilog asks once (it has seconds); the forwarder waits as long as it takes.
    arn = own_arn(imds, attempts=1 if args else None)
    if arn is None:
        return 2
    publisher = ReportPublisher(
        table=table,
        instance_arn=arn,
        region=region or None,
        cluster=env.get(CLUSTER_ENV, "").strip(),
    )
    spool = Path(env.get(SPOOL_ENV, "").strip() or REPORT_SPOOL)
    if args:
        if len(args) != 2 or args[0] != "--job" or not args[1].isdigit():
            log.error("usage: python -m relion_spot.node.job_reports [--job JOB_ID]")
            return 2
        if spool.is_dir():
            job_id = args[1]
            # The resolution metric stays the polling forwarder's: no second point per iteration.
            final = ReportPublisher(table=table, instance_arn=arn, region=region or None)
            Forwarder(spool=spool, publisher=final, jobs=lambda: squeue_job(job_id)).flush()
        return 0
    if not node:
        log.error("%s is empty: cannot tell which jobs are this node's", NODE_NAME_ENV)
        return 2
    poll = poll_seconds(env)
    if poll is None:
        return 2
    make_spool(spool)
    log.info("forwarding the reports of %s's jobs from %s to %s", node, spool, table)
    Forwarder(spool=spool, publisher=publisher, jobs=lambda: squeue_node_jobs(node)).run(poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
