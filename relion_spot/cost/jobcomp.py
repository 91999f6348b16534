"""Job record writer, run by slurmctld's ``jobcomp/script`` once per job attempt.

Slurm 24.11 passes the job in environment variables (JOBID, UID, USERNAME, JOBNAME, PARTITION,
NODES as a hostlist, NODECNT, PROCS, START, END as epoch seconds, JOBSTATE, EXITCODE,
STATEREASONPREV, ...) and nothing else; table, region and cluster come from the config file (see
``relion_spot.cost.config``). Each node is mapped to the instance that played it (by the node and
cluster tags and launch time), with its type, AZ, launch time and EBS volumes, and the attempt is
written once: a retried run writes nothing new.

If the table cannot be reached the attempt is kept in a spool directory and written by the next
run, so a brief outage loses no record. Run as ``python -m relion_spot.cost.jobcomp``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from relion_spot.cost import instances
from relion_spot.cost.config import ConfigError, CostConfig, seed_environment
from relion_spot.cost.hostlist import HostlistError, expand
from relion_spot.cost.pricing import Attempt, NodeUse, Volume
from relion_spot.cost.store import AttemptStore
from relion_spot.notify.events import job_notification
from relion_spot.notify.publish import Notifier

log = logging.getLogger("relion_spot.cost.jobcomp")

SPOOL_VARIABLE = "RELION_SPOT_JOBCOMP_SPOOL"


class SlurmRecordError(ValueError):
    pass


def _number(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "")
    if not raw.strip().isdigit():
        raise SlurmRecordError(f"{name}={raw!r}: expected a non-negative integer from Slurm")
    return int(raw)


REQUEUED_AS = "PENDING"
"""Slurm 24.11 reports an attempt ended by ``scontrol requeue`` (the spot watcher's hand-back)
with the state the job is in afterwards; a finished attempt is never pending otherwise."""


def attempt_from_slurm(env: Mapping[str, str], cluster: str) -> tuple[Attempt, list[str]] | None:
    """The attempt Slurm describes (without instances) and its node names; None when the job
    never ran (cancelled while pending: START is 0 and no nodes)."""
    job_id = env.get("JOBID", "").strip()
    if not job_id.isdigit():
        raise SlurmRecordError(f"JOBID={job_id!r}: expected Slurm's numeric job id")
    state = env.get("JOBSTATE", "").strip().upper()
    if not state:
        raise SlurmRecordError("JOBSTATE is empty; expected a Slurm job state such as COMPLETED")
    start, end = _number(env, "START"), _number(env, "END")
    try:
        nodes = expand(env.get("NODES", ""))
    except HostlistError as err:
        raise SlurmRecordError(str(err)) from err
    if start == 0 or not nodes:
        return None
    if end < start:
        raise SlurmRecordError(f"END={end} is before START={start}")
    if state == REQUEUED_AS:
        state = "REQUEUED"
    attempt = Attempt(
        cluster=cluster,
        job_id=job_id,
        start=start,
        end=end,
        state=state,
        user=env.get("USERNAME", "").strip() or env.get("UID", "").strip(),
        job_name=env.get("JOBNAME", ""),
        partition=env.get("PARTITION", ""),
        cpus=_number(env, "PROCS") if env.get("PROCS") else 0,
        node_count=_number(env, "NODECNT") if env.get("NODECNT") else len(nodes),
        reason=env.get("STATEREASONPREV", ""),
        exit_code=env.get("EXITCODE", ""),
    )
    return attempt, nodes


def _to_json(attempt: Attempt) -> str:
    return json.dumps(asdict(attempt))


def _from_json(text: str) -> Attempt:
    raw: dict[str, Any] = json.loads(text)
    raw["nodes"] = tuple(
        NodeUse(**{**n, "volumes": tuple(Volume(**v) for v in n["volumes"])}) for n in raw["nodes"]
    )
    return Attempt(**raw)


def _flush_spool(store: AttemptStore, spool: Path) -> None:
    for path in sorted(spool.glob("*.json")):
        store.put(_from_json(path.read_text()))
        path.unlink()
        log.info("wrote spooled attempt %s", path.name)


def record(
    env: Mapping[str, str],
    config: CostConfig,
    clients: tuple[Any, Any],
    notifier: Notifier | None = None,
) -> str:
    """Write the attempt; returns what happened ("written", "spooled", "duplicate",
    "not-run"). A written or spooled attempt is told to the lab (``notifier``) once: a retried
    run finds it written and says nothing."""
    ec2, dynamodb = clients
    parsed = attempt_from_slurm(env, config.cluster)
    if parsed is None:
        return "not-run"
    attempt, node_names = parsed
    inventory = instances.cluster_instances(ec2, config.cluster, node_names=node_names)
    uses = instances.node_uses(ec2, node_names, inventory, attempt.start, attempt.end)
    for use in uses:
        if use.instance_id is None:
            log.warning(
                "job %s: node %s matches no instance of %s",
                attempt.job_id,
                use.node,
                config.cluster,
            )
    attempt = dataclasses.replace(attempt, nodes=uses)
    store = AttemptStore(dynamodb, config.records_table)
    spool = Path(env[SPOOL_VARIABLE]) if env.get(SPOOL_VARIABLE) else None
    try:
        if spool is not None and spool.is_dir():
            _flush_spool(store, spool)
        written = store.put(attempt)
    except Exception:
        if spool is None:
            raise
        spool.mkdir(parents=True, exist_ok=True)
        target = spool / f"{attempt.job_id}-{attempt.key}.json"
        target.write_text(_to_json(attempt))
        log.exception("table unreachable; attempt kept in %s", target)
        _notify(notifier, attempt)
        return "spooled"
    if not written:
        return "duplicate"
    _notify(notifier, attempt)
    return "written"


def _notify(notifier: Notifier | None, attempt: Attempt) -> None:
    notification = job_notification(attempt)
    if notifier is not None and notification is not None:
        notifier.publish(notification)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="relion-spot jobcomp: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        seed_environment()
        config = CostConfig.from_env(need_costs=False)
        attempt_from_slurm(os.environ, config.cluster)
        import boto3

        session = boto3.session.Session()
        notifier = Notifier.from_env(
            os.environ, cluster=config.cluster, region=session.region_name or ""
        )
        outcome = record(
            os.environ, config, (session.client("ec2"), session.client("dynamodb")), notifier
        )
    except (ConfigError, SlurmRecordError) as err:
        print(f"relion-spot jobcomp: {err}", file=sys.stderr)
        return 2
    log.info("job %s attempt %s: %s", os.environ.get("JOBID"), os.environ.get("START"), outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
