"""The node's permission check: at every node start (the entrypoint runs it beside slurmd on an
EC2 node and on the embedded cloud's), dry-run the EC2 calls the node role makes, on the node's
own instance, and record the outcomes where ``relion-spot selftest`` reads them (the intake
table, under ``selftest:permissions:node:<instance id>``).

    python -I -m relion_spot.selftest.node_check

Exit status: 0 when every call would be allowed, 1 when one is denied or failed or the outcomes
could not be recorded, 2 when there is nothing to check (no intake table, no metadata service).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from ..intake.config import TABLE_ENV
from ..node.imds import DEFAULT_IMDS_URL, IMDS_URL_ENV, Imds, ImdsError
from ..powersave.ec2 import AWS_ERRORS, aws_error_text
from . import record
from .permissions import ALLOWED, all_allowed, check_node, sts_decoder

log = logging.getLogger("relion_spot.selftest.node_check")
NODE_CHECKER = "node:{instance_id}"


def main(environ: Mapping[str, str] | None = None, *, session: Any = None) -> int:
    env = os.environ if environ is None else environ
    logging.basicConfig(level=logging.INFO, format="relion-spot node permission check: %(message)s")
    table = env.get(TABLE_ENV, "").strip()
    if not table:
        log.error("nothing checked: %s is not set; it must name the intake table", TABLE_ENV)
        return 2
    imds = Imds(env.get(IMDS_URL_ENV, "").strip() or DEFAULT_IMDS_URL)
    try:
        instance_id = imds.get("instance-id")
        region = imds.get("placement/region") or env.get("AWS_DEFAULT_REGION", "").strip()
    except ImdsError as err:
        log.error("nothing checked: the instance metadata service did not answer (%s)", err)
        return 2
    if not instance_id:
        log.error("nothing checked: the metadata service names no instance")
        return 2
    if session is None:
        import boto3

        session = boto3.session.Session(region_name=region or None)
    outcomes = check_node(
        session.client("ec2"), instance_id, decode=sts_decoder(session.client("sts"))
    )
    for outcome in outcomes:
        line = f"{outcome.action} ({outcome.program}; {outcome.target}): {outcome.outcome}"
        if outcome.outcome == ALLOWED:
            log.info("%s", line)
        else:
            log.error("%s: %s %s", line, outcome.code, outcome.reason)
    checker = NODE_CHECKER.format(instance_id=instance_id)
    try:
        record.store(session.client("dynamodb"), table, checker, outcomes)
    except AWS_ERRORS as err:
        log.error("could not record the outcomes in %s: %s", table, aws_error_text(err))
        return 1
    return 0 if all_allowed(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
