"""Job directories that belong to one job only, numbered the way RELION numbers its jobs.

Every cluster stack runs its own slurmctld whose job ids start at 1, a controller whose state is
reset starts again at 1, and all of them share /data. A directory named after the Slurm job id
(``Class3D/job5``) is therefore not one job's: a fresh job could "resume" another job's run, or
stop at once as "finished" with another job's classes. Instead a job claims its directory:

- the first attempt takes the project's next free RELION job number (``Class3D/job007``: one
  counter per project across job types, as RELION's pipeline keeps it) with an exclusive mkdir,
  which is atomic on NFS/EFS too, and writes a claim file into it naming its owner;
- a later attempt (a requeue after a spot reclaim) finds the directory by that claim: by the
  intake's submission id (unique across clusters and controller resets), or, for a plain sbatch,
  by the newest claim of the same cluster and Slurm job id;
- a directory whose claim names another owner is never used, and a directory without a claim
  (made by the RELION GUI, or by hand) is never touched.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from ..intake.config import SUBMISSION_ID_ENV
from ..node.no_follow import read_small

CLAIM_FILE = ".relion-spot-job.json"
PIPELINE_FILE = "default_pipeline.star"
JOB_NAME = re.compile(r"^job(\d{3,})$")
JOB_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
MAX_ALLOCATION_TRIES = 1000


class JobDirError(ValueError):
    """The job cannot have a directory; the message says why."""


@dataclass(frozen=True)
class Owner:
    """Who a job directory belongs to."""

    cluster: str
    slurm_job_id: str
    submission_id: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Owner:
        job_id = env.get("SLURM_JOB_ID", "").strip()
        if not job_id.isdigit():
            raise JobDirError(f"SLURM_JOB_ID = {job_id!r}: not running under Slurm")
        return cls(
            cluster=env.get("SLURM_CLUSTER_NAME", "").strip(),
            slurm_job_id=job_id,
            submission_id=env.get(SUBMISSION_ID_ENV, "").strip(),
        )

    def describe(self) -> str:
        where = f"job {self.slurm_job_id} of cluster {self.cluster or '(unnamed)'}"
        return f"submission {self.submission_id} ({where})" if self.submission_id else where

    def same_job(self, other: Owner) -> bool:
        if self.submission_id or other.submission_id:
            return self.submission_id == other.submission_id
        return (self.cluster, self.slurm_job_id) == (other.cluster, other.slurm_job_id)


@dataclass(frozen=True)
class Claim:
    directory: Path
    owner: Owner
    created: float


MAX_CLAIM_BYTES = 4096
"""A claim is a line of JSON; anything larger is not one."""


def _claim_text(path: Path) -> str | None:
    """The claim file's text, read as a reader that may be root on a directory jobs write (the
    controller's drainer) must (relion_spot.node.no_follow.read_small); None when it is not a
    claim-sized regular file."""
    data = read_small(path, MAX_CLAIM_BYTES)
    return None if data is None else data.decode("utf-8", "replace")


def read_claim(directory: Path) -> Claim | None:
    """The claim in a job directory; None where there is none or it is unreadable (a claim is
    written whole by its creator, so a partial one means its creator died while writing)."""
    text = _claim_text(directory / CLAIM_FILE)
    if text is None:
        return None
    try:
        raw = json.loads(text)
        owner = Owner(
            cluster=str(raw["cluster"]),
            slurm_job_id=str(raw["slurm_job_id"]),
            submission_id=str(raw.get("submission_id", "")),
        )
        return Claim(directory, owner, float(raw["created"]))
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def job_number(name: str) -> int | None:
    match = JOB_NAME.match(name)
    return int(match.group(1)) if match else None


def _pipeline_counter(project: Path) -> int:
    """RELION's next job number from the project's pipeline (0 where there is none)."""
    try:
        text = (project / PIPELINE_FILE).read_text()
    except OSError:
        return 0
    match = re.search(r"_rlnPipeLineJobCounter\s+(\d+)", text)
    return int(match.group(1)) if match else 0


def _numbered_dirs(project: Path) -> list[Path]:
    """Every <Type>/jobNNN directory of the project; a link is not one (RELION's aliases are
    links with other names, and a root reader must not be led elsewhere)."""
    found = []
    for type_dir in project.iterdir() if project.is_dir() else ():
        if type_dir.is_symlink() or not type_dir.is_dir() or type_dir.name.startswith("."):
            continue
        for entry in type_dir.iterdir():
            if job_number(entry.name) is not None and not entry.is_symlink() and entry.is_dir():
                found.append(entry)
    return found


def find(project: Path, owner: Owner) -> Claim | None:
    """The newest directory of the project claimed by the same job as ``owner``."""
    claims = [read_claim(d) for d in _numbered_dirs(project)]
    mine = [c for c in claims if c is not None and c.owner.same_job(owner)]
    return max(mine, key=lambda c: c.created) if mine else None


def allocate(project: Path, job_type: str, owner: Owner, *, clock=time.time) -> Claim:
    """Take the project's next free job number for ``job_type`` and claim it for ``owner``."""
    numbers = [job_number(d.name) or 0 for d in _numbered_dirs(project)]
    candidate = max([_pipeline_counter(project), *(n + 1 for n in numbers), 1])
    type_dir = project / job_type
    type_dir.mkdir(exist_ok=True)
    for number in range(candidate, candidate + MAX_ALLOCATION_TRIES):
        directory = type_dir / f"job{number:03d}"
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        claim = Claim(directory, owner, clock())
        record = {**asdict(owner), "created": claim.created, "job_type": job_type}
        fd = os.open(directory / CLAIM_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as out:
            json.dump(record, out, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        return claim
    raise JobDirError(
        f"no free job number in {type_dir} from job{candidate:03d} on "
        f"({MAX_ALLOCATION_TRIES} taken)"
    )


def claim(project: Path, job_type: str, env: Mapping[str, str]) -> Claim:
    """This job's directory: its own from an earlier attempt, or a newly numbered one."""
    if not JOB_TYPE.match(job_type):
        raise JobDirError(f"job type {job_type!r} is not valid: letters, digits and _")
    if not project.is_dir():
        raise JobDirError(f"project directory {project} does not exist")
    owner = Owner.from_env(env)
    first_attempt = env.get("SLURM_RESTART_COUNT", "0").strip() in ("", "0")
    # A first attempt of a plain sbatch job must not find the claim of an earlier job that had
    # the same id (another controller, or this one before a reset): it always starts anew.
    if owner.submission_id or not first_attempt:
        existing = find(project, owner)
        if existing is not None:
            return existing
    return allocate(project, job_type, owner)


def check_owner(directory: Path, env: Mapping[str, str]) -> None:
    """Refuse a run directory claimed by another job (the guard against someone else's run)."""
    claimed = read_claim(directory)
    if claimed is None or "SLURM_JOB_ID" not in env:
        return
    me = Owner.from_env(env)
    if not claimed.owner.same_job(me):
        raise JobDirError(
            f"{directory} belongs to {claimed.owner.describe()}, not to {me.describe()}: "
            "a job never continues another job's run"
        )
