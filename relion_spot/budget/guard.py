"""The decisions: may this launch go ahead, and which jobs held for the budget may go now.

The resume program asks ``check_launch`` before it calls EC2; a launch that would take the month
past the cap is refused, its nodes handed back to Slurm and its jobs held with the reason
``budget: ...``. The release loop (``relion_spot.budget.release``, beside slurmctld) calls
``release_fitting`` once a minute: when the cap was raised (a redeploy with a larger
``monthly_budget_usd`` restarts the controller with it), removed, or a new month began, the held
jobs that now fit are released, oldest first, and Slurm schedules them again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..notify.publish import Notification, Notifier
from ..powersave.config import NodeGroup
from ..powersave.slurm import CommandRunner
from .config import BudgetConfig
from .forecast import Forecast, UnpricedGroupError, horizon_usd, running_usd
from .jobs import SlurmAnswerError, cluster_jobs, held_for_budget, release
from .ledger import month_of, month_spent

log = logging.getLogger(__name__)

NOTIFIED_FILE = "budget-notified.json"


class BudgetUnknownError(RuntimeError):
    """The spend or the running jobs could not be read: no launch is made on a guess."""


@dataclass
class BudgetGuard:
    config: BudgetConfig
    cluster: str
    groups: Mapping[str, NodeGroup]
    dynamodb: Any
    runner: CommandRunner
    squeue: str = "squeue"
    scontrol: str = "scontrol"
    clock: Callable[[], float] = time.time

    @property
    def capped(self) -> bool:
        return self.config.cap_usd is not None

    def _spent(self, now: float) -> float:
        try:
            return month_spent(self.dynamodb, self.config.costs_table, self.cluster, month_of(now))
        except (BotoCoreError, ClientError) as err:
            raise BudgetUnknownError(
                f"cannot read the month's spend from {self.config.costs_table}: {err}"
            ) from None

    def check_launch(
        self, nodes_by_partition: Mapping[str, list[str]], excluded_nodes: Iterable[str] = ()
    ) -> Forecast:
        """The forecast with the launch; ``would_pass`` says refuse it. Raises
        BudgetUnknownError when it cannot be told."""
        now = self.clock()
        try:
            jobs = cluster_jobs(self.runner, self.squeue)
            running = running_usd(jobs, self.groups, now=now, excluded_nodes=excluded_nodes)
            asked = sum(
                horizon_usd(self.groups[partition], len(names))
                for partition, names in nodes_by_partition.items()
            )
        except (SlurmAnswerError, UnpricedGroupError) as err:
            raise BudgetUnknownError(str(err)) from None
        return Forecast(self.config.cap_usd, self._spent(now), running, round(asked, 6))

    def release_fitting(self) -> list[str]:
        """Release the budget holds that fit under the cap now, oldest job first."""
        now = self.clock()
        try:
            jobs = cluster_jobs(self.runner, self.squeue)
        except SlurmAnswerError as err:
            raise BudgetUnknownError(str(err)) from None
        held = [j for j in jobs if held_for_budget(j)]
        if not held:
            return []
        cap = self.config.cap_usd
        fitting: list[str] = []
        if cap is None:
            fitting = [j.job_id for j in held]
        else:
            try:
                total = self._spent(now) + running_usd(jobs, self.groups, now=now)
                for job in held:
                    group = self.groups.get(job.partition)
                    if group is None:
                        continue
                    cost = horizon_usd(group, job.node_count)
                    if total + cost <= cap:
                        fitting.append(job.job_id)
                        total += cost
            except UnpricedGroupError as err:
                raise BudgetUnknownError(str(err)) from None
        if fitting and not release(self.runner, fitting, self.scontrol):
            raise BudgetUnknownError(f"scontrol could not release job(s) {','.join(fitting)}")
        return fitting


def notify_reached(
    notifier: Notifier | None, state_dir: Path, forecast: Forecast, held: list[str], now: float
) -> bool:
    """Tell the lab once per month and cap that the cap stops launches (the resume program
    meets it on every launch Slurm retries; one e-mail is enough)."""
    if notifier is None or forecast.cap_usd is None:
        return False
    marker = {"month": month_of(now), "cap_usd": forecast.cap_usd}
    path = state_dir / NOTIFIED_FILE
    try:
        if json.loads(path.read_text()) == marker:
            return False
    except (OSError, ValueError):
        pass
    sent = notifier.publish(
        Notification(
            event="budget-reached",
            subject=f"monthly budget ${forecast.cap_usd:.2f} reached: launches stopped",
            message=(
                f"No more nodes are launched this month: {forecast.describe()}.\n"
                f"Held job(s): {', '.join(held) or '-'} (reason 'budget'). Running jobs go on.\n"
                "Raise monthly_budget_usd and redeploy to release them, or they are released "
                "when the next month begins."
            ),
        )
    )
    if sent:
        state_dir.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(marker) + "\n")
        os.replace(temporary, path)
    return sent
