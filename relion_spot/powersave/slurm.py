"""Telling Slurm what happened to its nodes: every scontrol/squeue call goes through here.

One seam (``CommandRunner``: argv in, exit status and output back) so the programs run without
Slurm in tests, which record the exact command lines they would run, and against the real
commands everywhere else.

Which commands, and why (Slurm 24.11, src/slurmctld/node_mgr.c and power_save.c):
- A node whose launch failed: ``state=down reason=...`` first. Setting a node DOWN requeues the
  batch jobs allocated to it (JobRequeue=1) and records the EC2 reason where ``sinfo -R`` shows
  it. A DOWN node that is still POWERING_UP would stay so until ResumeTimeout, so
  ``state=power_down_force`` follows: it clears POWERING_UP, runs SuspendProgram, and with
  ``idle_on_node_suspend`` the name is free again after SuspendTimeout - a retry delay, not a
  lost node.
- POWER_DOWN_ASAP would not do for a failed launch: it waits for the node's jobs to finish,
  and jobs allocated to a node that never boots never do.
- Addresses: since 24.11 a CLOUD node's NodeAddr/NodeHostname come from its registration, and
  slurmctld resets them to the node name when the node powers down. The resume program does not
  set them: slurmd may register before the program's own update arrives (a local node container
  starts in about a second), and a late update would overwrite the right address with a stale
  one. It records the instance id and type instead (``scontrol show node`` shows them).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..intake.slurm import submission_of
from ..slurm import squeue
from .nodes import compress

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 240
COMMAND_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""


CommandRunner = Callable[[Sequence[str]], CommandResult]


def run_command(argv: Sequence[str]) -> CommandResult:
    """Run a Slurm client command; a missing binary or a hang is a failed result, not a crash."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
    except FileNotFoundError:
        return CommandResult(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"{argv[0]}: no answer within {COMMAND_TIMEOUT_SECONDS} s")
    return CommandResult(done.returncode, done.stdout, done.stderr)


def clean_reason(text: str) -> str:
    """One line Slurm can store as a node reason (no newlines, not too long)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_REASON_CHARS else flat[: MAX_REASON_CHARS - 3] + "..."


@dataclass
class Slurm:
    runner: CommandRunner = run_command
    scontrol: str = "scontrol"
    squeue: str = "squeue"

    def _run(self, argv: list[str]) -> CommandResult:
        result = self.runner(argv)
        if result.returncode != 0:
            log.error(
                "%s failed (exit %d): %s",
                " ".join(argv),
                result.returncode,
                (result.stderr or result.stdout).strip() or "no output",
            )
        return result

    def update_nodes(self, nodes: Sequence[str], *settings: tuple[str, str]) -> bool:
        """``scontrol update nodename=<nodes> key=value ...``; True if Slurm accepted it."""
        argv = [self.scontrol, "update", f"nodename={compress(nodes)}"]
        argv += [f"{key}={value}" for key, value in settings]
        return self._run(argv).returncode == 0

    def record_instance(self, node: str, instance_id: str, instance_type: str) -> bool:
        return self.update_nodes(
            [node], ("instanceid", instance_id), ("instancetype", instance_type)
        )

    def fail_launch(self, nodes: Sequence[str], reason: str) -> bool:
        """Down (jobs requeued, reason kept), then powered down so the names come back."""
        down = self.update_nodes(nodes, ("state", "down"), ("reason", clean_reason(reason)))
        released = self.update_nodes(nodes, ("state", "power_down_force"))
        return down and released

    def reset_addresses(self, nodes: Sequence[str]) -> bool:
        """NodeAddr and NodeHostname back to the node names, as slurmctld sets them at power
        down, so nothing is sent to an address a terminated instance used to have."""
        names = compress(nodes)  # the same expression expands in the same order as nodename
        return self.update_nodes(nodes, ("nodeaddr", names), ("nodehostname", names))

    def power_down_force(self, nodes: Sequence[str], reason: str) -> bool:
        return self.update_nodes(
            nodes, ("state", "power_down_force"), ("reason", clean_reason(reason))
        )

    def hold(self, job_ids: Sequence[str], reason: str) -> bool:
        """Hold the jobs (Slurm shows JobHeldAdmin) with the reason as their admin comment, so
        they wait for the account to be fixed instead of cycling through failed launches;
        ``scontrol release`` lets them go."""
        if not job_ids:
            return True
        ids = ",".join(job_ids)
        held = self._run([self.scontrol, "hold", ids]).returncode == 0
        comment = clean_reason(f"relion-spot held: {reason}")
        noted = (
            self._run(
                [self.scontrol, "update", f"jobid={ids}", f"admincomment={comment}"]
            ).returncode
            == 0
        )
        return held and noted

    def drain(self, node: str, reason: str) -> bool:
        return self.update_nodes([node], ("state", "drain"), ("reason", clean_reason(reason)))

    def power_down_asap(self, node: str, reason: str) -> bool:
        return self.update_nodes(
            [node], ("state", "power_down_asap"), ("reason", clean_reason(reason))
        )

    def jobs_on(self, node: str) -> list[str] | None:
        """Ids of the jobs running (or starting) on ``node``; None if squeue failed."""
        result = self._run(
            [
                self.squeue,
                "--noheader",
                f"--nodelist={node}",
                "--states=RUNNING,CONFIGURING,SUSPENDED",
                "--format=%i",
            ]
        )
        if result.returncode != 0:
            return None
        return [line.strip() for line in result.stdout.splitlines() if line.strip()]

    def submissions_of(self, job_ids: Sequence[str]) -> dict[str, str] | None:
        """Job id -> the intake submission it carries (its ``relion-spot:<id>`` comment), for
        those of ``job_ids`` that carry one; None if squeue failed."""
        if not job_ids:
            return {}
        result = self._run([self.squeue, "--json", f"--jobs={','.join(job_ids)}"])
        if result.returncode != 0:
            return None
        try:
            jobs = squeue.parse(result.stdout)
        except squeue.SqueueError:
            return None
        return {
            job.job_id: submission_id
            for job in jobs
            if (submission_id := submission_of(job.comment)) is not None
        }

    def requeue(self, job_ids: Sequence[str]) -> bool:
        return self._run([self.scontrol, "requeue", ",".join(job_ids)]).returncode == 0

    def held_for_begin_time(self, job_ids: Sequence[str]) -> list[str] | None:
        """Which of the jobs wait for their begin time (squeue reason BeginTime); None if squeue
        failed."""
        result = self._run(
            [self.squeue, "--noheader", f"--jobs={','.join(job_ids)}", "--format=%i|%r"]
        )
        if result.returncode != 0:
            return None
        held = []
        for line in result.stdout.splitlines():
            job, _, reason = line.strip().partition("|")
            if reason == "BeginTime":
                held.append(job)
        return held

    def start_now(self, job_ids: Sequence[str]) -> bool:
        """Lift the begin time Slurm puts on a requeued job (now + cred_expire + 1, 121 s by
        default). The delay keeps a new launch credential from predating the old one's revocation
        on the same node; a job requeued off a draining node cannot land there again."""
        argv = [self.scontrol, "update", f"jobid={','.join(job_ids)}", "starttime=now"]
        return self._run(argv).returncode == 0
