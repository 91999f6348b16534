"""What the selftest concludes from what it saw: one verdict per capability, each from the
cluster's own records (instances by tag, the job's progress and output, its cost record).

No AWS calls and no printing here: the observations come from a backend (``cloud`` or
``local``), the lines from ``display``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .permissions import ALLOWED, CheckOutcome

CAPABILITIES = (
    "launch",
    "bootstrap",
    "GPU",
    "image",
    "RELION",
    "reclaim",
    "resume",
    "cost record",
    "scale to zero",
)
PASSED = "passed"
FAILED = "FAILED"
NOT_TESTED = "not tested"

_RUNTIME = re.compile(r"^checkpoint: RELION (?P<version>\S+) via (?P<launcher>.+)$", re.M)
_COMMAND = re.compile(r"^checkpoint: (?P<argv>.*\brelion_refine(?:_mpi)?\b.*)$", re.M)


@dataclass(frozen=True)
class Verdict:
    capability: str
    result: str
    detail: str


@dataclass(frozen=True)
class JobRuntime:
    """What the job's own output says it ran (the checkpoint runner's lines)."""

    relion_version: str = ""
    launcher: str = ""
    argv: str = ""


def parse_job_output(text: str) -> JobRuntime:
    """The last attempt's RELION version, launcher and command line from the job's output."""
    runtimes = list(_RUNTIME.finditer(text))
    commands = [m for m in _COMMAND.finditer(text) if " via " not in m.group("argv")]
    return JobRuntime(
        relion_version=runtimes[-1].group("version") if runtimes else "",
        launcher=runtimes[-1].group("launcher").strip() if runtimes else "",
        argv=commands[-1].group("argv").strip() if commands else "",
    )


@dataclass
class Observations:
    """Everything the selftest saw, filled in as it goes."""

    gpu_expected: bool = True
    """False on the embedded cloud: no GPU there, the job runs without --nv/--gpu."""
    image: str = ""
    """The RELION image the cluster's template names."""
    interrupt_requested: bool = False
    instances_launched: list[str] = field(default_factory=list)
    job_running: bool = False
    node_checks: list[CheckOutcome] | None = None
    """The job's node's recorded dry runs (None: not looked at; []: none recorded)."""
    job_state: str = ""
    iterations_done: int = 0
    iterations_requested: int = 0
    interrupted_instance: str = ""
    interrupted_after_iteration: int | None = None
    interrupted_instance_gone: bool = False
    resumed_from: list[int] = field(default_factory=list)
    resumed_on: str = ""
    """The instance the job ran on after the interruption."""
    runtime: JobRuntime = field(default_factory=JobRuntime)
    accuracy: float | None = None
    cost_usd: float | None = None
    reclaimed_usd: float | None = None
    live_instances_at_end: list[str] = field(default_factory=list)
    scaled_to_zero: bool = False
    notes: list[str] = field(default_factory=list)


MIN_ACCURACY = 0.90


def judge(seen: Observations) -> list[Verdict]:
    """One verdict per capability, in CAPABILITIES order."""
    verdicts = [
        _launch(seen),
        _bootstrap(seen),
        _gpu(seen),
        _image(seen),
        _relion(seen),
        *_reclaim_and_resume(seen),
        _cost(seen),
        _scale(seen),
    ]
    assert [v.capability for v in verdicts] == list(CAPABILITIES)
    return verdicts


def _launch(seen: Observations) -> Verdict:
    if seen.instances_launched:
        return Verdict("launch", PASSED, f"spot instance(s) {', '.join(seen.instances_launched)}")
    return Verdict("launch", FAILED, "no instance of the cluster appeared")


def _bootstrap(seen: Observations) -> Verdict:
    if not seen.job_running:
        return Verdict("bootstrap", FAILED, "the job never started on a node")
    if seen.node_checks is not None:
        if not seen.node_checks:
            return Verdict(
                "bootstrap", FAILED, "the node ran the job but recorded no permission check"
            )
        refused = [o for o in seen.node_checks if o.outcome != ALLOWED]
        if refused:
            return Verdict(
                "bootstrap",
                FAILED,
                "the node role may not: "
                + "; ".join(f"{o.action} ({o.program}): {o.code} {o.reason}" for o in refused),
            )
    if seen.node_checks:
        return Verdict(
            "bootstrap",
            PASSED,
            f"the node joined Slurm, ran the job, and may make its {len(seen.node_checks)} EC2 "
            "calls",
        )
    return Verdict("bootstrap", PASSED, "the node joined Slurm and ran the job")


def _gpu(seen: Observations) -> Verdict:
    runtime = seen.runtime
    if not seen.gpu_expected:
        return Verdict("GPU", NOT_TESTED, "the embedded cloud has no GPU (no --nv, no --gpu)")
    if not runtime.launcher:
        return Verdict("GPU", FAILED, "the job's output names no RELION launch")
    words = runtime.argv.split()
    if "--nv" in runtime.launcher.split() and "--gpu" in words:
        return Verdict("GPU", PASSED, "RELION ran with --gpu inside apptainer --nv")
    return Verdict("GPU", FAILED, f"RELION ran without the GPU: {runtime.launcher}")


def _image(seen: Observations) -> Verdict:
    launcher = seen.runtime.launcher
    if launcher.startswith("apptainer exec") and any(
        word.endswith(".sif") for word in launcher.split()
    ):
        return Verdict("image", PASSED, f"apptainer exec of the cached SIF of {seen.image}")
    if not launcher:
        return Verdict("image", FAILED, "the job's output names no launcher")
    return Verdict("image", FAILED, f"RELION ran through {launcher!r}, not the image's SIF")


def _relion(seen: Observations) -> Verdict:
    version = seen.runtime.relion_version
    problems = []
    if not version.startswith("5."):
        problems.append(f"RELION {version or 'of unknown version'}, not 5")
    if seen.job_state != "COMPLETED":
        problems.append(f"the job ended {seen.job_state or 'in no known state'}")
    if seen.iterations_done != seen.iterations_requested:
        problems.append(f"{seen.iterations_done} of {seen.iterations_requested} iterations")
    if seen.accuracy is None:
        # The selftest classifies its own ground-truthed set: the job must have scored it.
        problems.append("the job reported no accuracy against the truth")
    elif seen.accuracy < MIN_ACCURACY:
        problems.append(f"accuracy {seen.accuracy:.3f} against the truth (< {MIN_ACCURACY})")
    if problems:
        return Verdict("RELION", FAILED, "; ".join(problems))
    return Verdict(
        "RELION",
        PASSED,
        f"RELION {version}, {seen.iterations_done} iterations, accuracy {seen.accuracy:.3f} "
        "against the truth",
    )


def _reclaim_and_resume(seen: Observations) -> Sequence[Verdict]:
    if not seen.interrupt_requested:
        return (
            Verdict("reclaim", NOT_TESTED, "no --interrupt"),
            Verdict("resume", NOT_TESTED, "no --interrupt"),
        )
    if not seen.interrupted_instance:
        failed = Verdict("reclaim", FAILED, "no node was interrupted")
        return failed, Verdict("resume", FAILED, "nothing to resume from")
    if not seen.interrupted_instance_gone or not seen.resumed_on:
        gone = "gone" if seen.interrupted_instance_gone else "still running"
        failed = Verdict(
            "reclaim",
            FAILED,
            f"{seen.interrupted_instance} {gone}; the job "
            + (f"went on on {seen.resumed_on}" if seen.resumed_on else "was not requeued"),
        )
        return failed, Verdict("resume", FAILED, "the job did not resume on a new node")
    reclaim = Verdict(
        "reclaim",
        PASSED,
        f"{seen.interrupted_instance} interrupted after iteration "
        f"{seen.interrupted_after_iteration}; the job was requeued onto {seen.resumed_on}",
    )
    after = seen.interrupted_after_iteration
    if after is None or not seen.resumed_from or seen.resumed_from[0] < after:
        return reclaim, Verdict(
            "resume",
            FAILED,
            f"resumed after iterations {seen.resumed_from or 'none'}, expected {after} or later",
        )
    if seen.iterations_done != seen.iterations_requested:
        return reclaim, Verdict("resume", FAILED, "the resumed job did not finish")
    return reclaim, Verdict(
        "resume",
        PASSED,
        f"resumed at iteration {seen.resumed_from[0] + 1} on {seen.resumed_on} and completed",
    )


def _cost(seen: Observations) -> Verdict:
    if seen.cost_usd is None or seen.cost_usd <= 0:
        return Verdict("cost record", FAILED, "no priced record of the job")
    reclaimed = (
        f", ${seen.reclaimed_usd:.4f} of it the interrupted attempt" if seen.reclaimed_usd else ""
    )
    return Verdict("cost record", PASSED, f"${seen.cost_usd:.4f}{reclaimed}")


def _scale(seen: Observations) -> Verdict:
    if seen.scaled_to_zero:
        return Verdict("scale to zero", PASSED, "no instance of the cluster left running")
    left = ", ".join(seen.live_instances_at_end) or "unknown"
    return Verdict("scale to zero", FAILED, f"still running: {left}")
