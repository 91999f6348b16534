"""Tells the lab why a job is held: the hold reason onto its submission's intake-table item.

The resume program holds jobs on a launch no retry can cure (relion_spot.powersave.resume); the
reason is Slurm's admin comment, which only someone with a shell on the cluster can read. Jobs
that came through the intake carry their submission id, so the reason also goes onto that
submission's item, where ``relion-spot status`` reads it. Best effort: a failure here is logged
and never changes what the resume program did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..intake.config import TABLE_ENV
from ..intake.table import mark_held
from .config import REGION_ENVS
from .slurm import Slurm

log = logging.getLogger("relion_spot.powersave.held")


def note_holds(
    env: Mapping[str, str],
    slurm: Slurm,
    job_ids: Sequence[str],
    reason: str,
    *,
    dynamodb: Any,
    clock: Callable[[], float],
) -> int:
    """Mark each held job's submission with ``reason``; how many were marked."""
    table = env.get(TABLE_ENV, "").strip()
    if not table or not job_ids:
        return 0
    submissions = slurm.submissions_of(job_ids)
    if not submissions:
        return 0
    from botocore.exceptions import BotoCoreError, ClientError

    if dynamodb is None:
        import boto3

        region = next((env[n] for n in REGION_ENVS if env.get(n)), None)
        dynamodb = boto3.session.Session().client("dynamodb", region_name=region)
    marked = 0
    for job_id, submission_id in sorted(submissions.items()):
        try:
            if mark_held(dynamodb, table, submission_id, reason, at=int(clock())):
                marked += 1
            else:
                log.warning("job %s: submission %s has no intake item", job_id, submission_id)
        except (ClientError, BotoCoreError) as err:
            log.error("job %s: hold reason NOT noted for %s: %s", job_id, submission_id, err)
    return marked
