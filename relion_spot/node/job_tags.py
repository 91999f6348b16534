"""Label this node's own instance with the job running on it, and clear the label after.

Run by Slurm as the node's Prolog (``start``) and Epilog (``end``), through
assets/slurm/bin/prolog and epilog. Cost allocation in the bill can then split a node's hours by
job. It must never cost a job its node: a Prolog that fails drains the node, so every AWS or IMDS
problem is one log line and exit 0; only a wrong command line (a person running it) exits 2.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .. import tags
from .imds import DEFAULT_IMDS_URL, IMDS_URL_ENV, Imds, ImdsError

log = logging.getLogger("relion_spot.node.job_tags")

ACTIONS = ("start", "end")
_TAG_VALUE_UNSAFE = re.compile(r"[^\w .:/=+\-@]")
MAX_TAG_VALUE = 256


def tag_value(text: str) -> str:
    """EC2 tag values take letters, digits, spaces and ``_ . : / = + - @`` only."""
    return _TAG_VALUE_UNSAFE.sub("_", text)[:MAX_TAG_VALUE]


def job_tags(env: Mapping[str, str]) -> dict[str, str]:
    """The job tags from the Prolog/Epilog environment; empty when no job id is given."""
    job_id = env.get("SLURM_JOB_ID", "").strip()
    if not job_id:
        return {}
    return {
        tags.JOB_ID: tag_value(job_id),
        tags.JOB_USER: tag_value(env.get("SLURM_JOB_USER", "")),
        tags.JOB_NAME: tag_value(env.get("SLURM_JOB_NAME", "")),
    }


def apply(action: str, env: Mapping[str, str], ec2: Any, instance_id: str) -> str:
    """Tag (start) or untag (end) ``instance_id``; returns what was done, for the log line."""
    wanted = job_tags(env)
    if not wanted:
        return "no SLURM_JOB_ID in the environment: nothing to tag"
    job_id = wanted[tags.JOB_ID]
    if action == "start":
        ec2.create_tags(
            Resources=[instance_id], Tags=[{"Key": k, "Value": v} for k, v in wanted.items()]
        )
        return f"{instance_id} tagged with job {job_id}"
    current = ec2.describe_tags(
        Filters=[
            {"Name": "resource-id", "Values": [instance_id]},
            {"Name": "key", "Values": [tags.JOB_ID]},
        ]
    )["Tags"]
    if current and current[0]["Value"] != job_id:
        return f"{instance_id} now runs job {current[0]['Value']}: job {job_id}'s end leaves it"
    ec2.delete_tags(Resources=[instance_id], Tags=[{"Key": k} for k in tags.JOB_TAG_KEYS])
    return f"{instance_id} job tags of job {job_id} cleared"


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    ec2_client: Any = None,
) -> int:
    logging.basicConfig(level=logging.INFO, format="relion-spot job-tags: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in ACTIONS:
        log.error("usage: job_tags start|end (got %s)", " ".join(args) or "nothing")
        return 2
    env = os.environ if environ is None else environ
    try:
        imds = Imds(env.get(IMDS_URL_ENV, "").strip() or DEFAULT_IMDS_URL)
        instance_id = imds.get("instance-id")
        if not instance_id:
            log.warning("IMDS knows no instance id: nothing tagged")
            return 0
        if ec2_client is None:
            import boto3

            region = imds.get("placement/region") or env.get("AWS_DEFAULT_REGION")
            ec2_client = boto3.client("ec2", region_name=region)
        log.info("%s", apply(args[0], env, ec2_client, instance_id))
    except ImdsError as err:
        log.warning("IMDS unreachable, nothing tagged: %s", err)
    except Exception as err:  # a Prolog must not drain the node over a label
        log.warning(
            "job tags not %s: %s: %s",
            "set" if args[0] == "start" else "cleared",
            type(err).__name__,
            err,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
