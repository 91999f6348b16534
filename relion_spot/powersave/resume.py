"""ResumeProgram: launch an EC2 spot instance for every node Slurm wants powered up.

    python -m relion_spot.powersave.resume <hostlist>        (run by slurmctld as SlurmUser)

One instant CreateFleet call per partition (up to 500 nodes a call) over the group's instance
types x subnets, spot, price-capacity-optimized, tagged at launch with the cluster and partition;
each instance is then tagged with its node name and type (the node's bootstrap reads its name
from those tags) and Slurm is told which instance plays the node.

Nodes EC2 could not launch are set DOWN with EC2's reason, so Slurm requeues their jobs, and
powered down again so the names can be retried (see ``slurm.Slurm.fail_launch``); a type that ran
out of capacity is left out of launches for a while (``capacity.CapacityMemory``).

Exit status: 0 when every node was launched or handed back to Slurm for a capacity shortage;
1 when something Slurm or an operator must look at went wrong (EC2 refused the request for a
reason other than capacity, tagging or scontrol failed); 2 on bad input, before any launch.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..budget.config import BudgetConfig, BudgetConfigError
from ..budget.guard import BudgetGuard, BudgetUnknownError, notify_reached
from ..budget.jobs import HOLD_REASON_PREFIX
from ..notify.publish import TOPIC_ENV, Notifier
from . import ec2 as fleet
from .capacity import CapacityMemory
from .config import NodeGroup, PowerSaveConfig
from .held import note_holds
from .invocation import ec2_client as new_ec2_client
from .invocation import start
from .nodes import NodeListError, compress, expand_hostlist
from .slurm import CommandRunner, Slurm, run_command

PROGRAM = "resume"
RESUME_FILE_ENV = "SLURM_RESUME_FILE"
PARALLEL_CALLS = 16
log = logging.getLogger(f"relion_spot.powersave.{PROGRAM}")


@dataclass
class PartitionResult:
    launched: dict[str, fleet.Launched] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    """Node -> the reason Slurm is given."""
    misconfigured: bool = False
    """Nothing launched and EC2 named only causes no retry cures (quota, zone, permission)."""
    trouble: bool = False
    """Something other than a capacity shortage went wrong: the exit status says so."""


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    runner: CommandRunner = run_command,
    ec2_client: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    dynamodb_client: Any = None,
    sns_client: Any = None,
) -> int:
    run = start(PROGRAM, log, argv, environ, nothing_done="nothing launched")
    if run is None:
        return 2
    env, config, nodes = run.env, run.config, run.nodes
    slurm = Slurm(runner=runner, scontrol=config.scontrol, squeue=config.squeue)
    jobs = jobs_by_node(env)
    all_nodes = run.node_names
    waiting = _jobs_text(jobs, all_nodes)
    log.info("resume %s%s", compress(all_nodes), f" for job(s) {waiting}" if waiting else "")
    refused = _refuse_over_budget(
        run.env, config, slurm, runner, jobs, nodes, dynamodb_client, sns_client, clock
    )
    if refused is not None:
        return refused
    ec2 = ec2_client or new_ec2_client(config)
    memory = CapacityMemory(config.state_dir, config.backoff_seconds, clock=clock)
    try:
        trouble = replace_stale_instances(ec2, config.cluster, all_nodes)
    except fleet.AWS_ERRORS as err:
        log.error("could not look for left-over instances: %s", fleet.aws_error_text(err))
        trouble = True
    for partition, names in nodes.items():
        try:
            result = launch_partition(
                ec2, config, config.groups[partition], names, memory, slurm, sleep=sleep
            )
        except fleet.AWS_ERRORS as err:
            reason = f"EC2 {fleet.aws_error_text(err)}"
            told = slurm.fail_launch(names, reason)
            log.error(
                "%s: not launched (%s); %s",
                compress(names),
                reason,
                "set DOWN and powered down" if told else "Slurm could not be told",
            )
            trouble = True
            continue
        trouble |= result.trouble
        if result.misconfigured:
            _hold_for_configuration(
                slurm, jobs, names, result, env=env, dynamodb=dynamodb_client, clock=clock
            )
    return 1 if trouble else 0


def _hold_for_configuration(
    slurm: Slurm,
    jobs: Mapping[str, list[str]],
    nodes: Sequence[str],
    result: PartitionResult,
    *,
    env: Mapping[str, str],
    dynamodb: Any,
    clock: Callable[[], float],
) -> None:
    """A launch no retry can cure: hold the jobs that waited for these nodes, with the reason,
    so they do not requeue and relaunch forever."""
    waiting = sorted({j for n in nodes for j in jobs.get(n, [])}, key=lambda j: (len(j), j))
    reason = next(iter(result.failed.values()), "EC2 refused the launch")
    text = f"fix the account (relion-spot doctor), then scontrol release: {reason}"
    if slurm.hold(waiting, text):
        log.error("job(s) %s held: %s", ",".join(waiting) or "-", text)
        note_holds(env, slurm, waiting, text, dynamodb=dynamodb, clock=clock)
    else:
        log.error("job(s) %s could NOT be held after: %s", ",".join(waiting), reason)
        result.trouble = True


def _refuse_over_budget(
    env: Mapping[str, str],
    config: PowerSaveConfig,
    slurm: Slurm,
    runner: CommandRunner,
    jobs: Mapping[str, list[str]],
    nodes: Mapping[str, list[str]],
    dynamodb: Any,
    sns: Any,
    clock: Callable[[], float],
) -> int | None:
    """None when the launch may go ahead; else the exit status after the nodes were handed back
    to Slurm and, when the cap would be passed, their jobs held with the reason "budget"."""
    all_nodes = [n for names in nodes.values() for n in names]
    try:
        budget = BudgetConfig.from_env(env)
        if budget.cap_usd is None:
            return None
        import boto3

        guard = BudgetGuard(
            budget,
            config.cluster,
            config.groups,
            dynamodb or boto3.session.Session().client("dynamodb", region_name=config.region),
            runner,
            squeue=config.squeue,
            scontrol=config.scontrol,
            clock=clock,
        )
        forecast = guard.check_launch(nodes, excluded_nodes=all_nodes)
    except (BudgetConfigError, BudgetUnknownError) as err:
        reason = f"budget could not be checked, nothing launched: {err}"
        slurm.fail_launch(all_nodes, reason)
        log.error("%s: %s", compress(all_nodes), reason)
        return 1
    if not forecast.would_pass:
        log.info("budget: %s", forecast.describe())
        return None
    waiting = sorted({j for n in all_nodes for j in jobs.get(n, [])}, key=lambda j: (len(j), j))
    if not waiting:  # no resume file: the jobs Slurm is configuring on these nodes
        waiting = sorted(
            {j for n in all_nodes for j in slurm.jobs_on(n) or []}, key=lambda j: (len(j), j)
        )
    told = slurm.fail_launch(all_nodes, f"budget: {forecast.describe()}")
    text = (
        f"{HOLD_REASON_PREFIX}${forecast.total_usd:.2f} forecast for the month passes its "
        f"${forecast.cap_usd:.2f} cap; raise monthly_budget_usd to release"
    )
    held = slurm.hold(waiting, text)
    log.error(
        "%s: not launched, %s; job(s) %s %s",
        compress(all_nodes),
        forecast.describe(),
        ",".join(waiting) or "-",
        "held for the budget" if held else "could NOT be held",
    )
    topic = env.get(TOPIC_ENV, "").strip()
    notifier = (
        Notifier(sns, topic, config.cluster)
        if sns is not None and topic
        else Notifier.from_env(env, cluster=config.cluster, region=config.region)
    )
    notify_reached(notifier, config.state_dir, forecast, waiting, clock())
    return 0 if told and held else 1


def jobs_by_node(env: Mapping[str, str]) -> dict[str, list[str]]:
    """Which jobs wait for which node, from SLURM_RESUME_FILE (read first: Slurm removes it
    when slurmctld restarts). Only for the log lines; a missing or odd file changes nothing."""
    path = env.get(RESUME_FILE_ENV, "").strip()
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
        mapping: dict[str, list[str]] = defaultdict(list)
        for job in data.get("jobs") or []:
            for node in expand_hostlist(job.get("nodes_resume") or job.get("nodes_alloc") or ""):
                mapping[node].append(str(job["job_id"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NodeListError) as err:
        log.warning("%s=%s unreadable (%s); going on without job names", RESUME_FILE_ENV, path, err)
        return {}
    return dict(mapping)


def _jobs_text(jobs: Mapping[str, list[str]], nodes: Sequence[str]) -> str:
    ids = sorted({j for n in nodes for j in jobs.get(n, [])}, key=lambda j: (len(j), j))
    return ",".join(ids)


def replace_stale_instances(ec2: Any, cluster: str, nodes: Sequence[str]) -> bool:
    """A node Slurm asks to resume is powered down in Slurm's eyes: an instance still tagged
    with its name is left over (a suspend that failed) and must not answer for the new one.
    Returns True if one could not be terminated."""
    stale = [i for i in fleet.node_instances(ec2, cluster, nodes) if i.state != "shutting-down"]
    if not stale:
        return False
    for instance in stale:
        log.info(
            "%s: terminating left-over %s (%s) before launching its replacement",
            instance.node,
            instance.instance_id,
            instance.state,
        )
    result = fleet.terminate(ec2, cluster, [i.instance_id for i in stale])
    for instance_id, why in result.refused.items():
        log.error("left-over %s could not be terminated: %s", instance_id, why)
    return bool(result.refused)


def launch_partition(
    ec2: Any,
    config: PowerSaveConfig,
    group: NodeGroup,
    nodes: list[str],
    memory: CapacityMemory,
    slurm: Slurm,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> PartitionResult:
    """Launch ``nodes`` of one partition; every node ends launched or handed back to Slurm."""
    result = PartitionResult()
    types, left_out = memory.order(group.instance_types)
    if left_out:
        short = memory.current()
        log.info(
            "%s: leaving out %s (no spot capacity lately: %s) while %s remain",
            group.partition,
            ",".join(left_out),
            ", ".join(f"{t} {short[t].code}" for t in left_out if t in short),
            ",".join(types),
        )
    for offset in range(0, len(nodes), fleet.MAX_FLEET_CAPACITY):
        batch = nodes[offset : offset + fleet.MAX_FLEET_CAPACITY]
        _launch_batch(ec2, config, group, types, batch, memory, result, sleep)
    _hand_back(slurm, result)
    return result


def _launch_batch(
    ec2: Any,
    config: PowerSaveConfig,
    group: NodeGroup,
    types: list[str],
    batch: list[str],
    memory: CapacityMemory,
    result: PartitionResult,
    sleep: Callable[[float], None],
) -> None:
    request = fleet.fleet_request(
        cluster=config.cluster,
        group=group,
        instance_types=types,
        subnets=config.subnets,
        count=len(batch),
    )
    outcome = fleet.create_fleet(ec2, request)
    errors = "; ".join(dict.fromkeys(e.describe() for e in outcome.errors))
    log.info(
        "%s: fleet of %d over %s x %d subnet(s): %d launched%s",
        group.partition,
        len(batch),
        ",".join(types),
        len(config.subnets),
        len(outcome.launched),
        f", EC2 errors: {errors}" if errors else "",
    )
    shortages: dict[str, str] = {}
    for error in outcome.errors:
        if error.is_capacity:
            # A whole request refused for capacity names no type: it holds for all it asked.
            for instance_type in [error.instance_type] if error.instance_type else types:
                shortages[instance_type] = error.code
    launched_types = sorted({i.instance_type for i in outcome.launched})
    memory.remember({t: c for t, c in shortages.items() if t not in launched_types})
    memory.forget(launched_types)
    if any(not e.is_capacity for e in outcome.errors):
        result.trouble = True
    if not outcome.launched and outcome.errors and all(e.is_configuration for e in outcome.errors):
        result.misconfigured = True

    extra = outcome.launched[len(batch) :]
    if extra:
        log.warning(
            "%s: EC2 launched %d more than asked; terminating them", group.partition, len(extra)
        )
        fleet.terminate(ec2, config.cluster, [i.instance_id for i in extra])
    pairs = list(zip(batch, outcome.launched, strict=False))
    problems = _in_parallel(lambda pair: fleet.tag_node(ec2, pair[1], pair[0], sleep=sleep), pairs)
    for (node, instance), problem in zip(pairs, problems, strict=True):
        if problem is None:
            result.launched[node] = instance
            continue
        log.error(
            "%s: %s could not be named (%s); terminating it", node, instance.instance_id, problem
        )
        for instance_id, why in fleet.terminate(
            ec2, config.cluster, [instance.instance_id]
        ).refused.items():
            log.error("%s was NOT terminated and may still bill: %s", instance_id, why)
        result.failed[node] = f"EC2 tagging failed: {problem}"
        result.trouble = True
    shortfall = batch[len(outcome.launched) :]
    if shortfall:
        reason = "EC2 " + (
            errors
            or f"fleet launched {len(outcome.launched)} of {len(batch)} instances, no error given"
        )
        for node in shortfall:
            result.failed[node] = reason


def _in_parallel(work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``work`` over ``items`` on a few threads, results in order: per-instance calls (EC2 tags,
    scontrol) each wait on a round trip, and a 64-node resume should not wait on 64 in a row."""
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(PARALLEL_CALLS, len(items))) as pool:
        return list(pool.map(work, items))


def _hand_back(slurm: Slurm, result: PartitionResult) -> None:
    launched = list(result.launched.items())
    told_each = _in_parallel(
        lambda item: slurm.record_instance(item[0], item[1].instance_id, item[1].instance_type),
        launched,
    )
    for (node, instance), told in zip(launched, told_each, strict=True):
        log.info(
            "%s: launched %s (%s in %s)%s",
            node,
            instance.instance_id,
            instance.instance_type,
            instance.subnet_id or "a node subnet",
            "" if told else "; Slurm was not told the instance id",
        )
        result.trouble |= not told
    by_reason: dict[str, list[str]] = defaultdict(list)
    for node, reason in result.failed.items():
        by_reason[reason].append(node)
    for reason, failed in by_reason.items():
        told = slurm.fail_launch(failed, reason)
        log.info(
            "%s: not launched (%s); %s",
            compress(failed),
            reason,
            "set DOWN so Slurm requeues their jobs, then powered down for a later retry"
            if told
            else "Slurm could not be told: they stay POWERING_UP until ResumeTimeout",
        )
        result.trouble |= not told


if __name__ == "__main__":
    sys.exit(main())
