"""S3 credentials for this node's staging and export jobs, handed out by root.

    python -I -m relion_spot.node.stage_credentials   (the node entrypoint starts it beside slurmd)

Jobs hold no instance credentials (relion_spot.node.metadata_guard shuts the metadata service to
every user but root), yet a staging job from ``s3://`` must read the lab's bucket. This broker
listens on a Unix socket (``SOCKET``) and answers a process only when all of this holds:

1. the kernel names it (SO_PEERCRED: pid and uid) and slurmd knows the pid as a process of a job
   (``scontrol pidinfo``) that runs on this node as that same uid;
2. Slurm lists that job here with the intake's comment (``relion-spot:<submission id>``);
3. the intake table, which only the drainer writes, holds that submission as an *accepted*
   submission *with this job id* (a comment is the job owner's to write; the table is not):
   a *stage* from an ``s3://bucket/key`` source, a *class3d* whose ``dataset`` is an
   ``s3://bucket/key`` tarball (relion_spot.jobs.dataset), an *export* (``relion-spot pull``) or
   an *import* (``relion-spot stage FOLDER``).

It then assumes the role for that job (``sts:AssumeRole``, the session named
``<node>-job-<id>`` for CloudTrail), for an hour at most, and hands it over; the client asks
again as it nears its end. A stage (or a class3d's dataset) gets the stage-reader role, narrowed
by a session policy to GetObject on that one object and ListBucket of its key alone (a dataset
named as a prefix: GetObject under it, ListBucket of it alone). An export gets the exchange's
job role, narrowed to PutObject under ``out/<its submission id>/`` of the exchange bucket; an
import the same role narrowed to GetObject under ``in/<its submission id>/``. The answer names
that bucket and prefix, so the job is never the one that says where it reads or writes.

Anything else is refused with one line to the asker and one log record; a refusal that time may
cure (Slurm silent, the decision not yet written) says so, and the client asks again. Connections
are served by a few threads, so a job that holds one open stalls no one; a fault in one answer
is logged and answered, and the broker goes on.

Environment: RELION_SPOT_STAGE_READ_ROLE (the reader's ARN; absent when the cluster was deployed
without stage_buckets), RELION_SPOT_EXCHANGE_ROLE and RELION_SPOT_EXCHANGE_BUCKET (the
results exchange's job role and bucket; the broker starts when either role is given),
RELION_SPOT_INTAKE_TABLE, RELION_SPOT_NODE_NAME, the region.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..intake.table import ACCEPTED, SUBMITTING, IntakeTable, Record
from .job_reports import NODE_NAME_ENV, NodeJob, squeue_node_jobs

ROLE_ENV = "RELION_SPOT_STAGE_READ_ROLE"
EXCHANGE_ROLE_ENV = "RELION_SPOT_EXCHANGE_ROLE"
EXCHANGE_BUCKET_ENV = "RELION_SPOT_EXCHANGE_BUCKET"
RESULTS_PREFIX = "out/"
"""Where export jobs write in the exchange bucket: ``out/<submission id>/``; the lab reads it."""
UPLOADS_PREFIX = "in/"
"""Where the lab uploads a folder for an import job: ``in/<submission id>/``; the job reads it."""
READ, WRITE, IMPORT, DATASET = "read", "write", "import", "dataset"
"""A stage's read of one object; an export's writes under its prefix; an import's reads under
its prefix."""
TABLE_ENV = "RELION_SPOT_INTAKE_TABLE"
SOCKET = Path("/run/relion-spot/stage-credentials.sock")
SESSION_SECONDS = 3600
"""The longest a role chained from the node's own session may last."""
REUSE_MARGIN = dt.timedelta(minutes=20)
"""A session is handed out again only while it has longer than this left: botocore refreshes
15 minutes before the end, and must then get a fresher one."""
CONNECTION_TIMEOUT_S = 30.0
SCONTROL_TIMEOUT_S = 20
WORKERS = 4
_PIDINFO = re.compile(r"^Slurm JobId=(\d+) ", re.MULTILINE)
"""``scontrol pidinfo``'s answer: ``Slurm JobId=42 ends at ...``."""

log = logging.getLogger("relion_spot.node.stage_credentials")


class Refused(Exception):
    """The asking process may not have credentials; the message says why. ``retry``: time may
    cure it (ask again)."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int


@dataclass(frozen=True)
class Approved:
    """What the intake approved this job to do: read one object (a stage), write under one
    prefix (an export) or read under one (an import; ``key`` then ends in ``/``)."""

    job_id: str
    bucket: str
    key: str
    access: str = READ


def peer_of(connection: socket.socket) -> Peer:
    """Who is on the other end, as the kernel says (not as the process claims)."""
    raw = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return Peer(pid=pid, uid=uid)


def job_id_of(pid: int) -> str:
    """The Slurm job the process belongs to, as slurmd knows it (``scontrol pidinfo``: the
    step daemon that started the process's ancestors), not as the process claims."""
    try:
        done = subprocess.run(
            ["scontrol", "pidinfo", str(pid)],
            capture_output=True,
            check=False,
            timeout=SCONTROL_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise Refused(
            f"pid {pid}: slurmd did not say which job it belongs to ({err})", retry=True
        ) from None
    out = done.stdout.decode("utf-8", "replace")
    found = _PIDINFO.search(out)
    if done.returncode != 0 or found is None:
        said = done.stderr.decode("utf-8", "replace") or out
        said = " ".join(said.split())[:200] or f"exit {done.returncode}"
        raise Refused(f"pid {pid}: not a process of a Slurm job on this node ({said})")
    return found.group(1)


def check_job(peer: Peer, job_id: str, jobs: list[NodeJob] | None, node: str) -> NodeJob:
    """The intake job ``job_id`` of the peer's user on this node, or Refused."""
    if jobs is None:
        raise Refused("Slurm did not answer which jobs run here", retry=True)
    for job in jobs:
        if job.job_id == job_id:
            if job.user_id != peer.uid:
                raise Refused(f"job {job_id} is not uid {peer.uid}'s")
            return job
    raise Refused(f"job {job_id} is not an intake job running on {node}")


def approved_source(job: NodeJob, record: Record | None, exchange_bucket: str = "") -> Approved:
    """What the intake accepted ``job`` to do, from the submission's record: the object a stage
    reads, or the exchange prefix an export writes (named by the submission, never the job)."""
    sid = job.submission_id
    if record is None:
        raise Refused(f"job {job.job_id}: no submission {sid!r} in the intake table")
    if record.state == SUBMITTING:
        raise Refused(f"job {job.job_id}: submission {sid} is still being decided", retry=True)
    if record.state != ACCEPTED or record.job_id != job.job_id:
        raise Refused(
            f"job {job.job_id}: submission {sid} is {record.state} for job "
            f"{record.job_id or 'none'}, not this job"
        )
    if record.template in ("export", "import"):
        if not exchange_bucket:
            raise Refused(f"job {job.job_id}: this node has no results exchange")
        if record.template == "export":
            return Approved(job.job_id, exchange_bucket, f"{RESULTS_PREFIX}{sid}/", WRITE)
        return Approved(job.job_id, exchange_bucket, f"{UPLOADS_PREFIX}{sid}/", IMPORT)
    if record.template not in ("stage", "class3d"):
        raise Refused(
            f"job {job.job_id}: submission {sid} is a {record.template} job, not stage, class3d, "
            "export or import"
        )
    # Imported here: relion_spot.jobs renders job scripts that name this module's socket.
    from ..jobs.parameters import DATASET_SOURCE

    if record.template == "class3d":
        return _approved_dataset(job, record)
    try:
        source = json.loads(record.parameters or "{}").get("source", "")
    except (ValueError, AttributeError):
        source = ""
    match = DATASET_SOURCE.fullmatch(source) if isinstance(source, str) else None
    if match is None or match["key"].endswith("/"):
        raise Refused(f"job {job.job_id}: submission {sid} stages from no s3:// object")
    return Approved(job.job_id, match["bucket"], match["key"])


def _approved_dataset(job: NodeJob, record: Record) -> Approved:
    """A Class3D's dataset as the drainer read it: the stored parameters parsed by the same
    code (aliases, spelling and checks alike), so the object read is the one accepted."""
    # Imported here: relion_spot.jobs renders job scripts that name this module's socket.
    from ..jobs.parameters import DATASET_SOURCE, from_mapping

    try:
        params = from_mapping(json.loads(record.parameters or "{}"))
    except (ValueError, TypeError, AttributeError):
        params = None
    match = DATASET_SOURCE.fullmatch(params.dataset) if params and params.dataset else None
    if match is None:
        raise Refused(
            f"job {job.job_id}: submission {job.submission_id} names as its dataset no s3:// object"
        )
    key = match["key"]
    return Approved(job.job_id, match["bucket"], key, DATASET if key.endswith("/") else READ)


def session_policy(approved: Approved, partition: str) -> str:
    """What the session may do, inside what the role may: read that one object (and list its
    key alone), read under that one prefix (and, for a dataset, list it alone), or write there."""
    bucket = f"arn:{partition}:s3:::{approved.bucket}"
    under = f"{bucket}/{approved.key}*"

    def allow(action: str | list[str], resource: str, **condition: Any) -> dict[str, Any]:
        statement: dict[str, Any] = {"Effect": "Allow", "Action": action, "Resource": resource}
        if condition:
            statement["Condition"] = condition
        return statement

    statements = {
        IMPORT: [allow("s3:GetObject", under)],
        DATASET: [
            allow("s3:GetObject", under),
            allow("s3:ListBucket", bucket, StringLike={"s3:prefix": f"{approved.key}*"}),
        ],
        WRITE: [allow(["s3:PutObject", "s3:AbortMultipartUpload"], under)],
        READ: [
            allow("s3:GetObject", f"{bucket}/{approved.key}"),
            allow("s3:ListBucket", bucket, StringEquals={"s3:prefix": approved.key}),
        ],
    }[approved.access]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


class Broker:
    """Assumes the stage-reader or the exchange's job role for an approved job and keeps the
    session while it is fresh enough."""

    def __init__(
        self,
        *,
        role_arn: str,
        exchange_role_arn: str = "",
        exchange_bucket: str = "",
        node: str,
        region: str,
        sts: Any,
        jobs: Callable[[], list[NodeJob] | None],
        submission: Callable[[str], Record | None],
        job_of: Callable[[int], str] = job_id_of,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.role_arn = role_arn
        self.exchange_role_arn = exchange_role_arn
        self.exchange_bucket = exchange_bucket
        some_role = role_arn or exchange_role_arn
        self.partition = some_role.split(":")[1] if some_role.count(":") >= 5 else "aws"
        self.node = node
        self.region = region
        self.sts = sts
        self.jobs = jobs
        self.submission = submission
        self.job_of = job_of
        self.now = now
        self._lock = threading.Lock()
        self._sessions: dict[Approved, dict[str, Any]] = {}

    def answer(self, peer: Peer) -> dict[str, Any]:
        """The reply for ``peer``: credentials in the credential_process shape, or an error."""
        from botocore.exceptions import BotoCoreError, ClientError

        job_id = "?"
        try:
            job_id = self.job_of(peer.pid)
            jobs = self.jobs()
            job = check_job(peer, job_id, jobs, self.node)
            approved = approved_source(
                job, self.submission(job.submission_id), self.exchange_bucket
            )
            reply = self._session(approved, jobs)
        except Refused as err:
            log.warning("refused pid %d (uid %d): %s", peer.pid, peer.uid, err)
            return {"Error": f"refused: {err}", "Retry": err.retry}
        except (BotoCoreError, ClientError) as err:
            log.error("job %s: AWS refused or did not answer: %s", job_id, err)
            return {"Error": f"AWS did not give this job its session: {err}", "Retry": True}
        log.info(
            "job %s (uid %d): S3 %s of s3://%s/%s until %s",
            job_id,
            peer.uid,
            approved.access,
            approved.bucket,
            approved.key,
            reply["Expiration"],
        )
        return reply

    def _session(self, approved: Approved, jobs: list[NodeJob] | None) -> dict[str, Any]:
        with self._lock:
            if jobs is not None:  # sessions of jobs that left this node are dropped
                here = {j.job_id for j in jobs}
                for gone in [a for a in self._sessions if a.job_id not in here]:
                    del self._sessions[gone]
            kept = self._sessions.get(approved)
            if kept and dt.datetime.fromisoformat(kept["Expiration"]) - self.now() > REUSE_MARGIN:
                return kept
        exchange = approved.access in (WRITE, IMPORT)
        role = self.exchange_role_arn if exchange else self.role_arn
        if not role:
            what = "results exchange" if exchange else "stage bucket"
            raise Refused(f"job {approved.job_id}: this cluster has no {what} role")
        granted = self.sts.assume_role(
            RoleArn=role,
            RoleSessionName=f"{self.node}-job-{approved.job_id}"[:64],
            DurationSeconds=SESSION_SECONDS,
            Policy=session_policy(approved, self.partition),
        )["Credentials"]
        expiration = granted["Expiration"]
        if isinstance(expiration, dt.datetime):
            expiration = expiration.astimezone(dt.UTC).isoformat()
        reply = {
            "Version": 1,
            "AccessKeyId": granted["AccessKeyId"],
            "SecretAccessKey": granted["SecretAccessKey"],
            "SessionToken": granted["SessionToken"],
            "Expiration": str(expiration),
            "Region": self.region,
        }
        if approved.access in (WRITE, IMPORT, DATASET):
            reply["Bucket"], reply["Prefix"] = approved.bucket, approved.key
        with self._lock:
            self._sessions[approved] = reply
        return reply


def listen(path: Path) -> socket.socket:
    """The broker's socket: anyone on the node may connect; the answer depends on who it is.
    Its directory must be root's alone (not a link, not writable by others)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = os.lstat(path.parent)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise OSError(f"{path.parent} is not a directory of this user's alone")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o666)
    server.listen(64)
    return server


def reply_to(connection: socket.socket, broker: Broker) -> None:
    """Answer one connection; whatever goes wrong is logged and answered, never fatal."""
    with connection:
        connection.settimeout(CONNECTION_TIMEOUT_S)
        try:
            reply = broker.answer(peer_of(connection))
        except Exception:  # a bug: logged in full, answered, and the broker goes on serving
            log.exception("answering a connection failed")
            reply = {"Error": "the broker failed on this request (see its log)", "Retry": True}
        with contextlib.suppress(OSError):  # the asker went away: nothing to tell it
            connection.sendall(json.dumps(reply).encode() + b"\n")


def serve(server: socket.socket, broker: Broker, *, stop: threading.Event) -> None:
    """Accept until ``stop``; each connection is answered by one of ``WORKERS`` threads."""
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="stage-credentials") as pool:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                if stop.is_set():
                    return
                raise
            pool.submit(reply_to, connection, broker)


def main(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    logging.basicConfig(
        level=logging.INFO, format="relion-spot stage credentials: %(message)s", stream=sys.stderr
    )
    role, node = env.get(ROLE_ENV, "").strip(), env.get(NODE_NAME_ENV, "").strip()
    exchange_role = env.get(EXCHANGE_ROLE_ENV, "").strip()
    exchange_bucket = env.get(EXCHANGE_BUCKET_ENV, "").strip()
    table = env.get(TABLE_ENV, "").strip()
    region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip()
    missing = [
        n
        for n, v in (
            (f"{ROLE_ENV} or {EXCHANGE_ROLE_ENV}", role or exchange_role),
            (NODE_NAME_ENV, node),
            (TABLE_ENV, table),
            ("AWS_REGION", region),
        )
        if not v
    ]
    if missing:
        print(f"relion-spot stage credentials: {', '.join(missing)} not set", file=sys.stderr)
        return 2
    import boto3

    intake = IntakeTable(boto3.client("dynamodb", region_name=region), table)
    if exchange_role and not exchange_bucket:
        print(f"relion-spot stage credentials: {EXCHANGE_BUCKET_ENV} not set", file=sys.stderr)
        return 2
    broker = Broker(
        role_arn=role,
        exchange_role_arn=exchange_role,
        exchange_bucket=exchange_bucket,
        node=node,
        region=region,
        sts=boto3.client("sts", region_name=region),
        jobs=lambda: squeue_node_jobs(node),
        submission=intake.get,
    )
    server = listen(SOCKET)
    log.info(
        "serving %s for %s on %s", SOCKET, " and ".join(r for r in (role, exchange_role) if r), node
    )
    serve(server, broker, stop=threading.Event())
    return 0


if __name__ == "__main__":
    sys.exit(main())
