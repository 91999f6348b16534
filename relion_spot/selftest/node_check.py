"""The node's permission check: at every node start (the entrypoint runs it beside slurmd on an
EC2 node and on the embedded cloud's), dry-run the EC2 calls the node role makes, on the node's
own instance, put the node's own report item as its forwarder does (for real: DynamoDB has no
dry run), and record the outcomes where ``relion-spot selftest`` reads them (the intake table,
under ``selftest:permissions:node:<instance id>``).

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
from ..intake.report import ReportError, instance_arn
from ..node.imds import DEFAULT_IMDS_URL, IMDS_URL_ENV, Imds, ImdsError
from .check import log_and_record
from .permissions import check_node, check_report_put, sts_decoder

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
        arn = instance_arn(imds)
    except ReportError as err:
        log.error("nothing checked: %s", err)
        return 2
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
    outcomes.append(check_report_put(session.client("dynamodb"), table, arn))
    checker = NODE_CHECKER.format(instance_id=instance_id)
    return log_and_record(session, table, checker, outcomes, log)


if __name__ == "__main__":
    sys.exit(main())
