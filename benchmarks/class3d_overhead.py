"""Benchmark: what the Class3D job template adds to RELION's wall time; what a reclaim costs.

Runs Debian's CPU relion_refine on a small ground-truthed synthetic set, three ways, interleaved
round by round (A, B, C, A, B, C, ...) so that load from other work on the machine falls on all
three alike:

  A  template:  the rendered local-mode sbatch script run with bash as Slurm would (SLURM_JOB_ID
                set): checkpoint wrapper, progress watcher, pipeline control, then RELION.
  B  bare:      relion_refine alone with the identical words the template runs, so the same
                allocator (the template's `env LD_PRELOAD=<tcmalloc>` launcher: without it the
                bare run would be about twice as slow and the comparison meaningless), the same
                flags (--j, --pool, --scratch_dir, --pipeline_control) and the same environment
                the wrapper gives RELION.
  C  reclaimed: the template killed (SIGKILL to its whole process group, as a reclaimed node
                takes the job with it) right after iteration k of N is complete, then started
                again as Slurm's requeue would (same job id), resuming at k + 1; the walls of
                both attempts are summed.

Printed: every sample, the medians and the ratios of medians:
  orchestration overhead = median(A) / median(B)   target <= 1.05
  reclaim overhead       = median(C) / median(A)   target <= 1 + 1/N + 0.05
                           (a restart from iteration 0 would cost 1 + k/N)
then the CPU seconds of A and B (the whole process tree: less sensitive to other load than wall)
and of everything else on the machine meanwhile (a slow sample with the same CPU and much more
"others" was slowed by other work), where the wall goes (before RELION's first files, the
iterations, after its exit marker), and the final accuracy of every run against the truth (a
resumed run should land within 0.05 of the uninterrupted ones), iteration by iteration too.

    .venv/bin/python benchmarks/class3d_overhead.py [--iterations N] [--kill-after k] [--repeats R]

Needs host RELION (scripts/setup-relion.sh). --workdir keeps the data set, runs and logs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from relion_spot.jobs import Class3dParams, NodeShape, render
from relion_spot.jobs.class3d import JOB_DIR, command_words
from relion_spot.jobs.job_dir import Owner, find
from relion_spot.relion.checkpoint import (
    CheckpointError,
    check_iteration,
    iteration_files,
    iteration_root,
    read_history,
)
from relion_spot.relion.score import score_run
from relion_spot.relion.synthetic import SyntheticResult, SyntheticSpec, generate
from relion_spot.relion.tools import relion_env

SPEC = SyntheticSpec(classes=2, particles_per_class=100, snr=1.0, seed=0)
THREADS = 2
POOL = 10
ORCHESTRATION_TARGET = 1.05
ACCURACY_TOLERANCE = 0.05
RUN_TIMEOUT_S = 1800
NEEDED = ("relion_refine", "relion_project", "relion_preprocess", "relion_reconstruct")

console = Console(stderr=True, highlight=False)


@dataclass
class Sample:
    kind: str
    seconds: float
    accuracy: float
    cpu_seconds: float | None = None
    """User + system seconds of the whole process tree (not for a killed attempt: the RELION it
    orphans is reaped elsewhere)."""
    others_cpu_seconds: float | None = None
    """CPU seconds the rest of the machine used meanwhile (/proc/stat busy minus the tree's):
    the load that makes a sample slow without being the run's fault."""
    phases: tuple[float, float, float] | None = None
    """Wall before RELION's iteration-0 files, from them to its exit marker, after the marker."""
    attempts: list[float] = field(default_factory=list)
    """Reclaimed runs: the wall of the killed attempt, then of the resumed one."""
    resumed_from: list[int] = field(default_factory=list)
    trajectory: list[float] = field(default_factory=list)
    """Accuracy after every iteration, 0 to N."""


@dataclass
class Finished:
    started: float
    """time.time() at the start, comparable with file modification times."""
    ended: float
    seconds: float
    cpu_seconds: float
    others_cpu_seconds: float | None


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have used (user, nice, system, irq, softirq,
    steal), from /proc/stat; None where there is none."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, data: SyntheticResult, scratch: Path, iterations: int) -> None:
        self.data = data
        self.iterations = iterations
        self.params = Class3dParams(
            particles=data.particles_star.name,
            reference=data.reference.name,
            K=SPEC.classes,
            iter=iterations,
            ini_high=round(2.5 * 2 * SPEC.angpix),
            particle_diameter=SPEC.particle_diameter_angstrom,
            offset_range=2,
            offset_step=1,
            j=THREADS,
            pool=POOL,
            project_dir=str(data.out),
            scratch_dir=str(scratch),
        )
        self.script = data.out / "class3d.sbatch"
        self.script.write_text(render(1, self.params, mode="local"))
        self.words = command_words(NodeShape.for_gpu_count(1), self.params, mode="local")
        self.logs = data.out / "logs"
        self.logs.mkdir(exist_ok=True)
        self._next_job = int(time.time()) % 100_000 * 10

    def env(self, job_id: str, restart: int = 0) -> dict[str, str]:
        """What tests/jobs/test_local_run.py gives the script: Slurm's job id, Open MPI's root
        permission and this interpreter's python first on PATH."""
        return {
            **os.environ,
            "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "SLURM_JOB_ID": job_id,
            "SLURM_RESTART_COUNT": str(restart),
        }

    def job_id(self) -> str:
        self._next_job += 1
        return str(self._next_job)

    def _start(self, argv: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        with log.open("wb") as handle:
            # Own session: a kill takes the whole job (bash, wrapper, RELION) like a reclaim.
            return subprocess.Popen(
                list(argv),
                cwd=self.data.out,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _reap(self, process: subprocess.Popen) -> tuple[int, float]:
        """Wait for the process; its exit code and the CPU seconds of its reaped process tree."""
        timer = threading.Timer(RUN_TIMEOUT_S, os.killpg, (process.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        return process.returncode, usage.ru_utime + usage.ru_stime

    def _run(self, argv: Sequence[str], env: dict[str, str], log: Path) -> Finished:
        busy = machine_busy_seconds()
        started_at = time.time()
        started = time.perf_counter()
        process = self._start(argv, env, log)
        code, cpu = self._reap(process)
        seconds = time.perf_counter() - started
        busy_after = machine_busy_seconds()
        others = busy_after - busy - cpu if busy is not None and busy_after is not None else None
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise SystemExit(f"class3d_overhead: run exited {code} ({log}):\n{tail}")
        return Finished(started_at, started_at + seconds, seconds, cpu, others)

    def _accuracy(self, root: Path) -> list[float]:
        """Accuracy after every iteration; the last is the run's final accuracy."""
        if not (root.parent / "RELION_JOB_EXIT_SUCCESS").is_file():
            raise SystemExit(f"class3d_overhead: {root.parent} has no RELION_JOB_EXIT_SUCCESS")
        scores = score_run(root, self.data.truth)
        if scores[-1].iteration != self.iterations:
            raise SystemExit(f"class3d_overhead: {root} ended at iteration {scores[-1].iteration}")
        return [s.accuracy for s in scores]

    @staticmethod
    def _phases(root: Path, run: Finished) -> tuple[float, float, float]:
        first = Path(f"{iteration_root(root, 0)}_model.star").stat().st_mtime
        last = (root.parent / "RELION_JOB_EXIT_SUCCESS").stat().st_mtime
        return first - run.started, last - first, run.ended - last

    def _root(self, job: str, timeout: float = 60) -> Path:
        """The run root in the directory the job claimed (relion_spot.jobs.job_dir)."""
        deadline = time.monotonic() + timeout
        while (claimed := find(self.data.out, Owner(cluster="", slurm_job_id=job))) is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"class3d_overhead: job {job} claimed no directory")
            time.sleep(0.05)
        return claimed.directory / "run"

    def template(self) -> Sample:
        job = self.job_id()
        run = self._run(["bash", str(self.script)], self.env(job), self.logs / f"A-{job}.log")
        root = self._root(job)
        scores = self._accuracy(root)
        phases = self._phases(root, run)
        return Sample(
            "template", run.seconds, scores[-1], run.cpu_seconds, run.others_cpu_seconds, phases,
            trajectory=scores,
        )  # fmt: skip

    def bare(self) -> Sample:
        job = self.job_id()
        job_dir = f"Bare/job{job}"
        (self.data.out / job_dir).mkdir(parents=True)
        argv = [w.replace(JOB_DIR, job_dir, 1) if w.startswith(JOB_DIR) else w for w in self.words]
        # The environment the wrapper gives RELION (relion_env of the job's environment); the
        # launcher words preload tcmalloc exactly as the template's do.
        env = relion_env(self.env(job))
        run = self._run(argv, env, self.logs / f"B-{job}.log")
        root = self.data.out / job_dir / "run"
        scores = self._accuracy(root)
        phases = self._phases(root, run)
        return Sample(
            "bare", run.seconds, scores[-1], run.cpu_seconds, run.others_cpu_seconds, phases,
            trajectory=scores,
        )  # fmt: skip

    def reclaimed(self, kill_after: int) -> Sample:
        job = self.job_id()
        first_log = self.logs / f"C-{job}-attempt0.log"
        started = time.perf_counter()
        process = self._start(["bash", str(self.script)], self.env(job), first_log)
        root = self._root(job)
        self._kill_when_complete(process, root, kill_after, first_log)
        killed = time.perf_counter() - started

        resumed = self._run(
            ["bash", str(self.script)], self.env(job, 1), self.logs / f"C-{job}-attempt1.log"
        )
        history = read_history(root)
        scores = self._accuracy(root)
        return Sample(
            "reclaimed",
            killed + resumed.seconds,
            scores[-1],
            attempts=[killed, resumed.seconds],
            resumed_from=[int(i) for i in history.get("resumed_from", [])],
            trajectory=scores,
        )

    def _kill_when_complete(
        self, process: subprocess.Popen, root: Path, iteration: int, log: Path
    ) -> None:
        """SIGKILL the job's process group as soon as the iteration is a complete checkpoint.

        Polls cheaply (file existence) and parses only once every file is there, so the poll
        takes next to no CPU from the run it watches."""
        files = list(iteration_files(root, iteration, SPEC.classes).values())
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(
                    f"class3d_overhead: run ended before iteration {iteration} ({log})"
                )
            if all(path.is_file() for path in files):
                try:
                    check_iteration(root, iteration, SPEC.classes)
                except CheckpointError:
                    pass
                else:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    return
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        raise SystemExit(f"class3d_overhead: iteration {iteration} not complete in time ({log})")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _listed(values: Sequence[float], digits: int = 1) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _figures(
    runs: dict[str, list[Sample]], n: int, k: int, generated_seconds: float, repeats: int
) -> tuple[list[str], dict, bool]:
    template, bare, reclaimed = runs["template"], runs["bare"], runs["reclaimed"]
    walls = {kind: [s.seconds for s in samples] for kind, samples in runs.items()}
    a, b, c = (_median(walls[kind]) for kind in ("template", "bare", "reclaimed"))
    orchestration, reclaim = a / b, c / a
    reclaim_target, from_zero = 1 + 1 / n + 0.05, 1 + k / n
    cpu_a = _median([s.cpu_seconds or 0.0 for s in template])
    cpu_b = _median([s.cpu_seconds or 0.0 for s in bare])
    uninterrupted = _median([s.accuracy for s in template])
    # In whole particles: 0.925 - 0.875 is 10 of 200 particles, not 0.05000000000000004.
    worst = max(abs(s.accuracy - uninterrupted) for s in reclaimed)
    gap = round(worst * SPEC.particles) / SPEC.particles
    resumed_right = all(s.resumed_from == [k] for s in reclaimed)
    orchestration_ok = orchestration <= ORCHESTRATION_TARGET
    reclaim_ok = reclaim <= reclaim_target and resumed_right
    accuracy_ok = gap <= ACCURACY_TOLERANCE

    def phases(samples: list[Sample]) -> str:
        medians = [_median([s.phases[i] for s in samples if s.phases]) for i in range(3)]
        return (
            f"before {medians[0]:.1f} s | iterations {medians[1]:.1f} s | after {medians[2]:.1f} s"
        )

    def others(samples: list[Sample]) -> str:
        return ", ".join(
            "?" if s.others_cpu_seconds is None else f"{s.others_cpu_seconds:.0f}" for s in samples
        )

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    lines = [
        f"Class3D overhead: {SPEC.particles} synthetic particles (K={SPEC.classes}, box "
        f"{SPEC.box}), N={n} iterations, k={k}, --j {THREADS} --pool {POOL}, {repeats} "
        "round(s) of A B C interleaved",
        f"  synthetic set generated in {generated_seconds:.1f} s",
        f"  A template   wall s: {_listed(walls['template'])}   median {a:.1f}",
        f"  B bare       wall s: {_listed(walls['bare'])}   median {b:.1f}",
        f"  C reclaimed  wall s: {_listed(walls['reclaimed'])}   median {c:.1f}",
        *(
            f"      = {s.attempts[0]:.1f} killed after iteration {k} + {s.attempts[1]:.1f} "
            f"resumed (resumed from {s.resumed_from})"
            for s in reclaimed
        ),
        f"  orchestration overhead A/B = {orchestration:.3f}   target <= "
        f"{ORCHESTRATION_TARGET:.2f}   {verdict(orchestration_ok)}",
        f"  reclaim overhead C/A = {reclaim:.3f}   target <= 1 + 1/N + 0.05 = {reclaim_target:.3f}"
        f"   restart from zero = 1 + k/N = {from_zero:.3f}   {verdict(reclaim_ok)}",
        f"  CPU s (process tree): A {_listed([s.cpu_seconds or 0.0 for s in template])}; "
        f"B {_listed([s.cpu_seconds or 0.0 for s in bare])}   medians A/B = "
        f"{cpu_a:.1f}/{cpu_b:.1f} = {cpu_a / cpu_b:.3f}",
        f"  other processes' CPU s meanwhile (load not ours): A {others(template)}; "
        f"B {others(bare)}",
        f"  wall phases, medians: A {phases(template)}",
        f"                        B {phases(bare)}",
        f"  final accuracy: A {_listed([s.accuracy for s in template], 3)}; "
        f"B {_listed([s.accuracy for s in bare], 3)}; "
        f"C {_listed([s.accuracy for s in reclaimed], 3)}",
        f"  resumed vs uninterrupted (A median {uninterrupted:.3f}): largest gap {gap:.3f}   "
        f"tolerance {ACCURACY_TOLERANCE:.2f}   {verdict(accuracy_ok)}",
        "  accuracy per iteration 0..N (first round):",
        *(f"      {kind:<9} {_listed(samples[0].trajectory, 3)}" for kind, samples in runs.items()),
    ]
    summary = {
        "template_s": [round(v, 2) for v in walls["template"]],
        "bare_s": [round(v, 2) for v in walls["bare"]],
        "reclaimed_attempts_s": [[round(v, 2) for v in s.attempts] for s in reclaimed],
        "orchestration_ratio": round(orchestration, 4),
        "reclaim_ratio": round(reclaim, 4),
        "cpu_ratio": round(cpu_a / cpu_b, 4),
        "accuracy": {
            kind: [round(s.accuracy, 4) for s in samples] for kind, samples in runs.items()
        },
    }
    return lines, summary, orchestration_ok and reclaim_ok and accuracy_ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=8, help="N, RELION's --iter")
    parser.add_argument("--kill-after", type=int, default=4, help="k: reclaim after iteration k")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of A, B, C")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the data set, runs and logs here"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.kill_after < args.iterations:
        parser.error("--kill-after must be at least 1 and below --iterations")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    missing = [p for p in NEEDED if shutil.which(p) is None]
    if missing:
        print(
            f"class3d_overhead: needs host RELION ({', '.join(missing)} not on PATH): "
            "run scripts/setup-relion.sh",
            file=sys.stderr,
        )
        return 2

    n, k = args.iterations, args.kill_after
    runs: dict[str, list[Sample]] = {"template": [], "bare": [], "reclaimed": []}
    with tempfile.TemporaryDirectory(prefix="class3d-overhead-") as tmp:
        work = args.workdir.resolve() if args.workdir else Path(tmp)
        with console.status("generating the synthetic data set"):
            data = generate(SPEC, work / "data", overwrite=True)
        console.log(f"synthetic set: {SPEC.particles} particles, generated in {data.seconds:.1f} s")
        scratch = work / "scratch"
        scratch.mkdir(exist_ok=True)
        bench = Bench(data, scratch, n)
        for round_ in range(1, args.repeats + 1):
            for kind in runs:
                label = f"round {round_}/{args.repeats} {kind}"
                with console.status(f"{label} (N={n})"):
                    if kind == "template":
                        sample = bench.template()
                    elif kind == "bare":
                        sample = bench.bare()
                    else:
                        sample = bench.reclaimed(k)
                runs[kind].append(sample)
                detail = f", CPU {sample.cpu_seconds:.1f} s" if sample.cpu_seconds else ""
                if sample.others_cpu_seconds is not None:
                    detail += f", others {sample.others_cpu_seconds:.0f} CPU s"
                if sample.attempts:
                    detail = f" = {_listed(sample.attempts)} (resumed from {sample.resumed_from})"
                console.log(
                    f"{label}: {sample.seconds:.1f} s{detail}, accuracy {sample.accuracy:.3f}"
                )

    lines, summary, ok = _figures(runs, n, k, data.seconds, args.repeats)
    print("\n".join(lines))
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
