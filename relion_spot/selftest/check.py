"""The controller's permission check: at every start (the entrypoint runs it beside slurmctld)
and on demand, dry-run the power-save programs' calls with the controller's own credentials and
record the outcomes where ``relion-spot selftest`` reads them.

    python -m relion_spot.selftest.check

Exit status: 0 when every call would be allowed, 1 when one is denied or failed, 2 on bad
settings (nothing checked).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..intake.config import TABLE_ENV
from ..powersave.config import ConfigError, PowerSaveConfig
from ..powersave.ec2 import AWS_ERRORS, aws_error_text
from . import record
from .permissions import ALLOWED, CheckOutcome, all_allowed, check_powersave, sts_decoder

log = logging.getLogger("relion_spot.selftest.check")


def main(environ: Mapping[str, str] | None = None, *, session: Any = None) -> int:
    env = os.environ if environ is None else environ
    logging.basicConfig(level=logging.INFO, format="relion-spot permission check: %(message)s")
    table = env.get(TABLE_ENV, "").strip()
    try:
        config = PowerSaveConfig.from_env(env)
    except ConfigError as err:
        log.error("nothing checked: %s", err)
        return 2
    if not table:
        log.error("nothing checked: %s is not set; it must name the intake table", TABLE_ENV)
        return 2
    if session is None:
        import boto3

        session = boto3.session.Session(region_name=config.region)
    outcomes = check_powersave(
        session.client("ec2"), config, decode=sts_decoder(session.client("sts"))
    )
    return log_and_record(session, table, record.CONTROLLER, outcomes, log)


def log_and_record(
    session: Any,
    table: str,
    checker: str,
    outcomes: Sequence[CheckOutcome],
    logger: logging.Logger,
) -> int:
    """Each outcome as a log line, then all of them recorded where ``relion-spot selftest``
    reads them; the exit status: 0 when every call would be allowed, else 1."""
    for outcome in outcomes:
        line = f"{outcome.action} ({outcome.program}; {outcome.target}): {outcome.outcome}"
        if outcome.outcome == ALLOWED:
            logger.info("%s", line)
        else:
            logger.error("%s: %s %s", line, outcome.code, outcome.reason)
    try:
        record.store(session.client("dynamodb"), table, checker, outcomes)
    except AWS_ERRORS as err:
        logger.error("could not record the outcomes in %s: %s", table, aws_error_text(err))
        return 1
    return 0 if all_allowed(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
