"""The controller's budget loop: jobs held for the budget go again when they fit under the cap.

    python -m relion_spot.budget.release        (started by the entrypoint beside slurmctld)

Once a minute it lists the jobs held with the reason "budget" (one ``squeue --json``); only when
there are some does it read the month's spend. A cap raised by a redeploy (the controller
restarts with the new value), a cap removed, or a new month releases the jobs that fit, oldest
first; Slurm then schedules them and the resume program checks the cap again before it launches.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping

from ..powersave import logs
from ..powersave.config import ConfigError, PowerSaveConfig
from ..powersave.slurm import CommandRunner, run_command
from .config import BudgetConfig, BudgetConfigError
from .guard import BudgetGuard, BudgetUnknownError

PROGRAM = "budget"
CHECK_SECONDS = 60.0
log = logging.getLogger(f"relion_spot.powersave.{PROGRAM}")


def guard_from_env(env: Mapping[str, str], runner: CommandRunner = run_command) -> BudgetGuard:
    import boto3

    config = PowerSaveConfig.from_env(env)
    return BudgetGuard(
        BudgetConfig.from_env(env),
        config.cluster,
        config.groups,
        boto3.session.Session().client("dynamodb", region_name=config.region),
        runner,
        squeue=config.squeue,
        scontrol=config.scontrol,
    )


def step(guard: BudgetGuard) -> list[str]:
    """One check; the ids released (none when the check could not be made: it is logged)."""
    try:
        released = guard.release_fitting()
    except BudgetUnknownError as err:
        log.error("budget holds not checked: %s", err)
        return []
    if released:
        cap = guard.config.cap_usd
        log.info(
            "released job(s) %s held for the budget (%s)",
            ",".join(released),
            "no cap" if cap is None else f"they fit under the ${cap:.2f} cap",
        )
    return released


def run(guard: BudgetGuard, *, stop: threading.Event, every: float = CHECK_SECONDS) -> None:
    while not stop.is_set():
        step(guard)
        stop.wait(every)


def main(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    logs.setup(PROGRAM, "")
    try:
        guard = guard_from_env(env)
    except (ConfigError, BudgetConfigError) as err:
        log.error("budget loop not started: %s", err)
        return 2
    run(guard, stop=threading.Event())
    return 0


if __name__ == "__main__":
    sys.exit(main())
