"""S3 read credentials for this node's staging jobs, handed out by root.

    python -I -m relion_spot.node.stage_credentials   (the node entrypoint starts it beside slurmd)

Jobs hold no instance credentials (relion_spot.node.metadata_guard shuts the metadata service to
every user but root), yet a staging job from ``s3://`` must read the lab's bucket. This broker
listens on a Unix socket (``SOCKET``). The kernel names the connecting process (SO_PEERCRED: pid
and uid); slurmd must know the process as one of a job's (``scontrol pidinfo``) that Slurm runs
on this node for the intake, as that same uid. It then gets the
credentials of the cluster's stage-read role (``sts:AssumeRole``, one session per job named
``<node>-job-<id>`` so CloudTrail says which job read what): GetObject and ListBucket on the
``stage_buckets`` and nothing else, an hour at most, asked again as they near their end. A
process of a user with no job here, or naming another user's job, is refused with one line and
one log record; root is never asked for anything by a job.

Environment: RELION_SPOT_STAGE_READ_ROLE (the role's ARN; without it the node was deployed
without stage_buckets and the broker is not started), RELION_SPOT_NODE_NAME, the region.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .job_reports import NODE_NAME_ENV, NodeJob, squeue_node_jobs

ROLE_ENV = "RELION_SPOT_STAGE_READ_ROLE"
SOCKET = Path("/run/relion-spot/stage-credentials.sock")
SESSION_SECONDS = 3600
"""The longest a role chained from the node's own session may last."""
REUSE_MARGIN = dt.timedelta(minutes=20)
"""A session is handed out again only while it has longer than this left: botocore refreshes
15 minutes before the end, and must then get a fresher one."""
CONNECTION_TIMEOUT_S = 30.0
SCONTROL_TIMEOUT_S = 20
_PIDINFO = re.compile(r"^Slurm JobId=(\d+) ", re.MULTILINE)
"""``scontrol pidinfo``'s answer: ``Slurm JobId=42 ends at ...``."""
MAX_REPLY_BYTES = 16 * 1024

log = logging.getLogger("relion_spot.node.stage_credentials")


class Refused(Exception):
    """The asking process may not have credentials; the message says why."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int


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
            text=True,
            check=False,
            timeout=SCONTROL_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise Refused(f"pid {pid}: slurmd did not say which job it belongs to ({err})") from None
    found = _PIDINFO.search(done.stdout)
    if done.returncode != 0 or found is None:
        said = " ".join((done.stderr or done.stdout).split())[:200] or f"exit {done.returncode}"
        raise Refused(f"pid {pid}: not a process of a Slurm job on this node ({said})")
    return found.group(1)


def check_job(peer: Peer, job_id: str, jobs: list[NodeJob] | None, node: str) -> NodeJob:
    """The intake job ``job_id`` of the peer's user on this node, or Refused."""
    if jobs is None:
        raise Refused("Slurm did not answer which jobs run here; ask again")
    for job in jobs:
        if job.job_id == job_id:
            if job.user_id != peer.uid:
                raise Refused(f"job {job_id} is not uid {peer.uid}'s")
            return job
    raise Refused(f"job {job_id} is not an intake job running on {node}")


class Broker:
    """Assumes the stage-read role for a job and keeps the session while it is fresh enough."""

    def __init__(
        self,
        *,
        role_arn: str,
        node: str,
        region: str,
        sts: Any,
        jobs: Callable[[], list[NodeJob] | None],
        job_of: Callable[[int], str] = job_id_of,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.role_arn = role_arn
        self.node = node
        self.region = region
        self.sts = sts
        self.jobs = jobs
        self.job_of = job_of
        self.now = now
        self._sessions: dict[str, dict[str, Any]] = {}

    def answer(self, peer: Peer) -> dict[str, Any]:
        """The reply for ``peer``: credentials in the credential_process shape, or an error."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            job_id = self.job_of(peer.pid)
            jobs = self.jobs()
            self._forget_all_but(jobs)
            job = check_job(peer, job_id, jobs, self.node)
            reply = self._session(job)
        except Refused as err:
            log.warning("refused pid %d (uid %d): %s", peer.pid, peer.uid, err)
            return {"Error": f"refused: {err}"}
        except (BotoCoreError, ClientError) as err:
            log.error("job %s: AssumeRole %s failed: %s", job_id, self.role_arn, err)
            return {"Error": f"the stage-read role could not be assumed: {err}"}
        log.info(
            "job %s (uid %d): S3 read credentials until %s",
            job.job_id,
            peer.uid,
            reply["Expiration"],
        )
        return reply

    def _session(self, job: NodeJob) -> dict[str, Any]:
        kept = self._sessions.get(job.job_id)
        if kept and dt.datetime.fromisoformat(kept["Expiration"]) - self.now() > REUSE_MARGIN:
            return kept
        granted = self.sts.assume_role(
            RoleArn=self.role_arn,
            RoleSessionName=f"{self.node}-job-{job.job_id}"[:64],
            DurationSeconds=SESSION_SECONDS,
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
        self._sessions[job.job_id] = reply
        return reply

    def _forget_all_but(self, jobs: list[NodeJob] | None) -> None:
        """Drop the sessions of jobs no longer on this node."""
        if jobs is None:
            return
        here = {j.job_id for j in jobs}
        for job_id in [j for j in self._sessions if j not in here]:
            del self._sessions[job_id]


def listen(path: Path) -> socket.socket:
    """The broker's socket: anyone on the node may connect; the answer depends on who it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o666)
    server.listen(16)
    return server


def serve_one(server: socket.socket, broker: Broker) -> None:
    connection, _ = server.accept()
    with connection:
        connection.settimeout(CONNECTION_TIMEOUT_S)
        reply = broker.answer(peer_of(connection))
        with contextlib.suppress(OSError):  # the asker went away: nothing to tell it
            connection.sendall(json.dumps(reply).encode() + b"\n")


def main(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    logging.basicConfig(
        level=logging.INFO, format="relion-spot stage credentials: %(message)s", stream=sys.stderr
    )
    role, node = env.get(ROLE_ENV, "").strip(), env.get(NODE_NAME_ENV, "").strip()
    region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip()
    missing = [
        n for n, v in ((ROLE_ENV, role), (NODE_NAME_ENV, node), ("AWS_REGION", region)) if not v
    ]
    if missing:
        print(f"relion-spot stage credentials: {', '.join(missing)} not set", file=sys.stderr)
        return 2
    import boto3

    broker = Broker(
        role_arn=role,
        node=node,
        region=region,
        sts=boto3.client("sts", region_name=region),
        jobs=lambda: squeue_node_jobs(node),
    )
    server = listen(SOCKET)
    log.info("serving %s for %s on %s", SOCKET, role, node)
    while True:
        serve_one(server, broker)


if __name__ == "__main__":
    sys.exit(main())
