"""SuspendProgram: terminate the instances behind nodes Slurm has powered down.

    python -m relion_spot.powersave.suspend <hostlist>       (run by slurmctld as SlurmUser)

Instances are found by tag (this cluster + the node names), never by anything a second cluster
could share, so another cluster's instances are out of reach. Idempotent: a node whose instance
is already gone or going is logged and left alone, and a second run finds nothing to do.

Exit status: 0 when every named node has no live instance left (or one already shutting down);
1 when EC2 refused to terminate one (an instance still billing is worth a line in Slurm's log);
2 on bad input, before anything is terminated.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from . import ec2 as fleet
from .invocation import ec2_client as new_ec2_client
from .invocation import start

PROGRAM = "suspend"
log = logging.getLogger(f"relion_spot.powersave.{PROGRAM}")


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    ec2_client: Any = None,
) -> int:
    run = start(PROGRAM, log, argv, environ, nothing_done="nothing terminated")
    if run is None:
        return 2
    config, nodes = run.config, run.node_names
    ec2 = ec2_client or new_ec2_client(config)
    try:
        return 0 if terminate_nodes(ec2, config.cluster, nodes) else 1
    except fleet.AWS_ERRORS as err:
        log.error("could not find the nodes' instances: %s", fleet.aws_error_text(err))
        return 1


def terminate_nodes(ec2: Any, cluster: str, nodes: Sequence[str]) -> bool:
    """Terminate every live instance of ``cluster`` playing one of ``nodes``; True if none is
    left running (terminated now, already going, or never there)."""
    found = fleet.node_instances(ec2, cluster, nodes)
    by_node: dict[str, list[fleet.NodeInstance]] = {}
    for instance in found:
        by_node.setdefault(instance.node, []).append(instance)
    to_terminate = []
    for node in nodes:
        instances = by_node.get(node, [])
        if not instances:
            log.info("%s: no live instance (already gone)", node)
        for instance in instances:
            if instance.state == "shutting-down":
                log.info("%s: %s already shutting down", node, instance.instance_id)
                continue
            log.info(
                "%s: terminating %s (%s, %s)",
                node,
                instance.instance_id,
                instance.instance_type,
                instance.state,
            )
            to_terminate.append(instance.instance_id)
    result = fleet.terminate(ec2, cluster, to_terminate)
    for instance_id, why in sorted(result.refused.items()):
        log.error("%s was NOT terminated and may still bill: %s", instance_id, why)
    return not result.refused


if __name__ == "__main__":
    sys.exit(main())
