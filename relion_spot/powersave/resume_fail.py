"""ResumeFailProgram: clean up after nodes that did not register within ResumeTimeout.

    python -m relion_spot.powersave.resume_fail <hostlist>   (run by slurmctld as SlurmUser)

By the time this runs Slurm has set the nodes DOWN and requeued their jobs. What a half-done
resume may have left is cleaned up here:
- instances tagged with the nodes' names (booted but never registered, or still booting);
- instances of the nodes' partitions that never got a node name at all (a resume stopped between
  CreateFleet and tagging) once they are older than ``ORPHAN_SECONDS``, well past the seconds a
  live resume takes to name its instances;
- the nodes' addresses in Slurm, set back to their names.
Then the nodes are powered down (``power_down_force``): a node left DOWN after ResumeTimeout is
never suspended by Slurm itself, so without this its name would be lost until an operator acts.

Exit status: 0 when all of that was done; 1 when an instance could not be terminated or Slurm
could not be told; 2 on bad input, before anything is changed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import ec2 as fleet
from .invocation import ec2_client as new_ec2_client
from .invocation import start
from .nodes import compress
from .slurm import CommandRunner, Slurm, run_command
from .suspend import terminate_nodes

PROGRAM = "resume-fail"
ORPHAN_SECONDS = 300
REASON = "no slurmd registration within ResumeTimeout; instance terminated"
log = logging.getLogger("relion_spot.powersave.resume_fail")


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    runner: CommandRunner = run_command,
    ec2_client: Any = None,
    clock: Callable[[], float] = time.time,
) -> int:
    run = start(PROGRAM, log, argv, environ, nothing_done="nothing changed")
    if run is None:
        return 2
    config, grouped, nodes = run.config, run.nodes, run.node_names
    log.info("resume failed for %s: cleaning up", compress(nodes))
    ec2 = ec2_client or new_ec2_client(config)
    try:
        ok = terminate_nodes(ec2, config.cluster, nodes)
        ok &= terminate_orphans(ec2, config.cluster, list(grouped), now=clock())
    except fleet.AWS_ERRORS as err:
        log.error("could not find the nodes' instances: %s", fleet.aws_error_text(err))
        ok = False
    slurm = Slurm(runner=runner, scontrol=config.scontrol, squeue=config.squeue)
    if slurm.reset_addresses(nodes):
        log.info("%s: addresses set back to the node names", compress(nodes))
    else:
        ok = False
    if slurm.power_down_force(nodes, REASON):
        log.info("%s: powered down; the names can be launched again", compress(nodes))
    else:
        ok = False
    return 0 if ok else 1


def terminate_orphans(ec2: Any, cluster: str, partitions: Sequence[str], *, now: float) -> bool:
    """Terminate unnamed instances of ``partitions`` older than ORPHAN_SECONDS."""
    orphans = [
        i
        for i in fleet.unnamed_instances(ec2, cluster, partitions)
        if i.state != "shutting-down" and now - i.launch_time > ORPHAN_SECONDS
    ]
    for instance in orphans:
        log.info(
            "terminating %s (%s): launched %d s ago and never given a node name",
            instance.instance_id,
            instance.instance_type,
            int(now - instance.launch_time),
        )
    result = fleet.terminate(ec2, cluster, [i.instance_id for i in orphans])
    for instance_id, why in sorted(result.refused.items()):
        log.error("%s was NOT terminated and may still bill: %s", instance_id, why)
    return not result.refused


if __name__ == "__main__":
    sys.exit(main())
