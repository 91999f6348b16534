"""PrologSlurmctld: return once the job's nodes have registered, so its script starts at once.

A job allocated powered-down nodes stays CONFIGURING while they boot. Slurm 24.11 starts its batch
script only from one of two places: a periodic check in slurmctld (every 30 s, fixed when Slurm is
built), or the end of this program (slurmctld then tests the nodes and launches at once). Waiting
here for the nodes' registration therefore takes up to 30 s off every scale-from-zero start.

slurmctld runs it as SlurmUser with SLURM_JOB_ID and SLURM_JOB_NODELIST set. It always exits 0: a
non-zero exit would requeue the job, and a node that never registers is already handled by
ResumeTimeout. The wait ends at ResumeTimeout (from the cluster spec the entrypoint saved); after
that the periodic check takes over.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ..powersave.slurm import CommandRunner, run_command
from . import node_states
from .spec import ClusterSpec, SpecError

log = logging.getLogger("relion_spot.slurm.wait_for_nodes")

SPEC_FILE = Path("/etc/relion-spot/cluster.json")
POLL_SECONDS = 1.0
DEFAULT_DEADLINE_SECONDS = 900.0
BOOTING_FLAGS = ("POWERING_UP", "POWERED_DOWN")
"""The node flags slurmctld's readiness test waits out (select_p_job_ready)."""


def booting_nodes(scontrol_json: str) -> list[str] | None:
    """Names of the nodes in ``scontrol --json show nodes`` output that are not up yet; None
    when the answer lists no node or cannot be read (then there is nothing to tell yet)."""
    try:
        states = node_states.parse(scontrol_json)
    except node_states.NodeStatesError as err:
        log.warning("%s", err)
        return None
    if not states:
        return None
    return [n.name for n in states if any(flag in BOOTING_FLAGS for flag in n.flags)]


def deadline_seconds(spec_file: Path = SPEC_FILE) -> float:
    try:
        return float(ClusterSpec.from_json(spec_file.read_text()).resume_timeout)
    except (OSError, SpecError):
        return DEFAULT_DEADLINE_SECONDS


def wait(
    nodes: str,
    *,
    deadline: float,
    runner: CommandRunner = run_command,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Poll until no node of the host list ``nodes`` is booting; False if the deadline passed."""
    ends = clock() + deadline
    while True:
        result = runner(node_states.command(nodes))
        if result.returncode == 0 and booting_nodes(result.stdout) == []:
            return True
        if clock() >= ends:
            return False
        sleep(POLL_SECONDS)


def main(environ: Mapping[str, str] | None = None, runner: CommandRunner = run_command) -> int:
    env = os.environ if environ is None else environ
    logging.basicConfig(level=logging.INFO, format="relion-spot wait-for-nodes: %(message)s")
    job, nodes = env.get("SLURM_JOB_ID", "?"), env.get("SLURM_JOB_NODELIST", "").strip()
    if not nodes:
        log.warning("job %s: no SLURM_JOB_NODELIST; nothing to wait for", job)
        return 0
    started = time.monotonic()
    if wait(nodes, deadline=deadline_seconds(), runner=runner):
        log.info("job %s: %s up after %.1f s", job, nodes, time.monotonic() - started)
    else:
        log.warning("job %s: %s not up by ResumeTimeout; Slurm decides", job, nodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
