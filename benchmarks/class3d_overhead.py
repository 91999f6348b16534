"""Benchmark: what the Class3D job template adds to RELION 5's wall time; what a reclaim costs.

Runs RELION 5 where a job runs it: in a node container (the embedded cloud's node image, started
with the node's Apptainer flags) as the job user, relion_refine through ``apptainer exec`` of the
SIF in /containers, on a small ground-truthed synthetic set (made the same way), three ways,
interleaved round by round (A, B, C, A, B, C, ...) so that load from other work on the machine
falls on all three alike:

  A  template:  the rendered local-mode sbatch script run with bash as slurmd would (SLURM_JOB_ID
                set): job directory claim, image check, checkpoint wrapper, progress watcher,
                pipeline control, then RELION through the launch line.
  B  bare:      ``apptainer exec --bind /data,/scratch SIF relion_refine`` with the identical words
                the template runs, in an identical container, with the environment the wrapper
                gives RELION.
  C  reclaimed: the template's container killed (``docker kill``, as a reclaimed node takes the
                job with it) right after iteration k of N is complete, then started again as
                Slurm's requeue would (same job id, SLURM_RESTART_COUNT=1), resuming at k + 1;
                the walls of both attempts are summed.

Printed: every sample, the medians and the ratios of medians:
  orchestration overhead = median(A) / median(B)   target <= 1.05
  reclaim overhead       = median(C) / median(A)   target <= 1 + 1/N + 0.05
                           (a restart from iteration 0 would cost 1 + k/N)
then the CPU seconds of every run (its container's cgroup: less sensitive to other load than
wall) and of everything else on the machine meanwhile (a slow sample with the same CPU and much
more "others" was slowed by other work), where the wall goes (before RELION's first files, the
iterations, after its exit marker), and the final accuracy of every run against the truth (a
resumed run should land within 0.05 of the uninterrupted ones), iteration by iteration too.

    .venv/bin/python benchmarks/class3d_overhead.py [--iterations N] [--kill-after k] [--repeats R]
        [--particles-per-class P]

Needs Docker with the node image and the RELION image in the container cache
(scripts/setup-docker.sh). --workdir keeps the data set, runs and logs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
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
from relion_spot.jobs.class3d import (
    CONTAINER_CACHE,
    IMAGE_SCRIPT,
    JOB_DIR,
    LOCAL_IMAGE,
    SIF,
    command_words,
)
from relion_spot.jobs.job_dir import Owner, find
from relion_spot.local.job_container import (
    JobContainerError,
    job_container,
    make_synthetic,
)
from relion_spot.relion.checkpoint import (
    CheckpointError,
    check_iteration,
    iteration_files,
    iteration_root,
    read_history,
)
from relion_spot.relion.score import score_run
from relion_spot.relion.synthetic import SyntheticSpec, load_manifest
from relion_spot.slurm.local import docker_available

PARTICLES_PER_CLASS = 100
THREADS = 2
POOL = 10
CLUSTER = "bench"
ORCHESTRATION_TARGET = 1.05
ACCURACY_TOLERANCE = 0.05
RUN_TIMEOUT_S = 1800
CPU_MARK = "class3d-overhead: container cpu ns "
"""What a container prints last: its cgroup's CPU time, read just before it exits."""
CONTAINER_CPU_NS = (
    "cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null"
    " || awk '/^usage_usec/ {print $2 * 1000}' /sys/fs/cgroup/cpu.stat"
)
"""The container's own CPU nanoseconds, as it sees its cgroup (v1 cpuacct or v2 cpu.stat)."""

console = Console(stderr=True, highlight=False)


@dataclass
class Sample:
    kind: str
    seconds: float
    accuracy: float
    cpu_seconds: float | None = None
    """CPU seconds of the run's container(s), from their cgroups (both attempts of a reclaim)."""
    others_cpu_seconds: float | None = None
    """CPU seconds the rest of the machine used meanwhile (/proc/stat busy minus the run's):
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
    cpu_seconds: float | None
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


def host_cgroup_cpu_seconds(container_id: str) -> float | None:
    """A running container's CPU seconds read from the host's cgroup tree (cgroupfs or systemd
    driver, v1 or v2); None where none of them is visible."""
    v1 = [
        Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage"),
        Path(f"/sys/fs/cgroup/cpuacct/system.slice/docker-{container_id}.scope/cpuacct.usage"),
    ]
    v2 = [
        Path(f"/sys/fs/cgroup/docker/{container_id}/cpu.stat"),
        Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat"),
    ]
    for path in v1:
        if path.is_file():
            return int(path.read_text()) / 1e9
    for path in v2:
        if path.is_file():
            usage = re.search(r"^usage_usec (\d+)", path.read_text(), re.MULTILINE)
            if usage:
                return int(usage.group(1)) / 1e6
    return None


def container_cpu_seconds(log: Path) -> float | None:
    """The CPU seconds a finished container printed last (CPU_MARK)."""
    found = re.findall(rf"^{re.escape(CPU_MARK)}(\d+)$", log.read_text(errors="replace"), re.M)
    return int(found[-1]) / 1e9 if found else None


class Bench:
    def __init__(self, project: Path, iterations: int) -> None:
        self.project = project
        self.iterations = iterations
        manifest = load_manifest(project)
        spec = manifest["spec"]
        self.classes = int(spec["classes"])
        self.particles = int(manifest["particles"])
        self.truth = project / manifest["files"]["truth"]
        self.params = Class3dParams(
            particles=manifest["files"]["particles"],
            reference=manifest["files"]["reference"],
            K=self.classes,
            iter=iterations,
            ini_high=round(2.5 * 2 * float(spec["angpix"])),
            particle_diameter=float(manifest["particle_diameter_angstrom"]),
            offset_range=2,
            offset_step=1,
            j=THREADS,
            pool=POOL,
            project_dir=f"/data/{project.name}",
        )
        (project / "class3d.sbatch").write_text(render(1, self.params, mode="local"))
        self.words = command_words(NodeShape.for_gpu_count(1), self.params, mode="local")
        self.logs = project.parent / "logs"
        self.logs.mkdir(exist_ok=True)
        self.owner = project.stat()
        self.sif, self.relion_env = self._probe()
        self._next_job = int(time.time()) % 100_000 * 10

    def _container(self, name: str, job: str, restart: int, env: dict[str, str]) -> list[str]:
        """docker run of a node container as slurmd's job would have it: /data and the image
        cache mounted, the node's Apptainer flags, Slurm's job variables; the command (appended)
        runs as the job user in the project, and the container's CPU time is printed last."""
        variables = {
            "SLURM_JOB_ID": job,
            "SLURM_CLUSTER_NAME": CLUSTER,
            "SLURM_RESTART_COUNT": str(restart),
            **env,
        }
        return job_container(
            data_dir=self.project.parent,
            name=name,
            workdir=f"/data/{self.project.name}",
            env=variables,
            after=f'echo "{CPU_MARK}$({CONTAINER_CPU_NS})" >&2;',
            docker_options=("--cidfile", str(self.logs / f"{name}.cid")),
        )

    def _probe(self) -> tuple[str, dict[str, str]]:
        """The SIF the jobs run (made first if need be, as every job would) and the environment
        the checkpoint wrapper gives RELION in the node image."""
        ask = (
            f"{IMAGE_SCRIPT} {shlex.quote(LOCAL_IMAGE)} {CONTAINER_CACHE} && python -c "
            "'import json; from relion_spot.relion.tools import relion_env; "
            "print(json.dumps(relion_env({})))'"
        )
        argv = self._container(f"class3d-overhead-{os.getpid()}-probe", "0", 0, {})
        done = subprocess.run(
            [*argv, "bash", "-c", ask], capture_output=True, text=True, timeout=900, check=False
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or len(lines) < 2:
            raise SystemExit(f"class3d_overhead: probing the node image failed:\n{done.stderr}")
        return lines[-2], json.loads(lines[-1])

    def job_id(self) -> str:
        self._next_job += 1
        return str(self._next_job)

    def _start(self, argv: Sequence[str], log: Path) -> subprocess.Popen:
        with log.open("wb") as handle:
            return subprocess.Popen(list(argv), stdout=handle, stderr=subprocess.STDOUT)

    def _wait(self, process: subprocess.Popen, name: str) -> int:
        timer = threading.Timer(
            RUN_TIMEOUT_S, subprocess.run, (["docker", "kill", name],), {"capture_output": True}
        )
        timer.start()
        try:
            return process.wait()
        finally:
            timer.cancel()

    def _run(self, argv: Sequence[str], name: str, log: Path) -> Finished:
        busy = machine_busy_seconds()
        started_at = time.time()
        started = time.perf_counter()
        code = self._wait(self._start(argv, log), name)
        seconds = time.perf_counter() - started
        busy_after = machine_busy_seconds()
        cpu = container_cpu_seconds(log)
        others = (
            busy_after - busy - cpu
            if busy is not None and busy_after is not None and cpu is not None
            else None
        )
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise SystemExit(f"class3d_overhead: run exited {code} ({log}):\n{tail}")
        return Finished(started_at, started_at + seconds, seconds, cpu, others)

    def _template_argv(self, name: str, job: str, restart: int = 0) -> list[str]:
        return [*self._container(name, job, restart, {}), "bash", "class3d.sbatch"]

    def _accuracy(self, root: Path) -> list[float]:
        """Accuracy after every iteration; the last is the run's final accuracy."""
        if not (root.parent / "RELION_JOB_EXIT_SUCCESS").is_file():
            raise SystemExit(f"class3d_overhead: {root.parent} has no RELION_JOB_EXIT_SUCCESS")
        scores = score_run(root, self.truth)
        if scores[-1].iteration != self.iterations:
            raise SystemExit(f"class3d_overhead: {root} ended at iteration {scores[-1].iteration}")
        return [s.accuracy for s in scores]

    @staticmethod
    def _phases(root: Path, run: Finished) -> tuple[float, float, float]:
        first = Path(f"{iteration_root(root, 0)}_model.star").stat().st_mtime
        last = (root.parent / "RELION_JOB_EXIT_SUCCESS").stat().st_mtime
        return first - run.started, last - first, run.ended - last

    def _root(self, job: str, process: subprocess.Popen, log: Path, timeout: float = 600) -> Path:
        """The run root in the directory the job claimed (relion_spot.jobs.job_dir)."""
        deadline = time.monotonic() + timeout
        while (claimed := find(self.project, Owner(cluster=CLUSTER, slurm_job_id=job))) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"class3d_overhead: job {job} claimed no directory ({log})")
            time.sleep(0.2)
        return claimed.directory / "run"

    def _claimed(self, job: str) -> Path:
        claimed = find(self.project, Owner(cluster=CLUSTER, slurm_job_id=job))
        if claimed is None:
            raise SystemExit(f"class3d_overhead: job {job} claimed no directory")
        return claimed.directory / "run"

    def template(self) -> Sample:
        job = self.job_id()
        name = f"class3d-overhead-{os.getpid()}-A{job}"
        run = self._run(self._template_argv(name, job), name, self.logs / f"A-{job}.log")
        root = self._claimed(job)
        scores = self._accuracy(root)
        return Sample(
            "template", run.seconds, scores[-1], run.cpu_seconds, run.others_cpu_seconds,
            self._phases(root, run), trajectory=scores,
        )  # fmt: skip

    def bare(self) -> Sample:
        job = self.job_id()
        name = f"class3d-overhead-{os.getpid()}-B{job}"
        job_dir = f"Bare/job{job}"
        for path in (self.project / "Bare", self.project / job_dir):
            path.mkdir(exist_ok=True)
            os.chown(path, self.owner.st_uid, self.owner.st_gid)
        words = [
            self.sif if w == SIF else w.replace(JOB_DIR, job_dir, 1) if w.startswith(JOB_DIR) else w
            for w in self.words
        ]
        argv = [*self._container(name, job, 0, self.relion_env), *words]
        run = self._run(argv, name, self.logs / f"B-{job}.log")
        root = self.project / job_dir / "run"
        scores = self._accuracy(root)
        return Sample(
            "bare", run.seconds, scores[-1], run.cpu_seconds, run.others_cpu_seconds,
            self._phases(root, run), trajectory=scores,
        )  # fmt: skip

    def reclaimed(self, kill_after: int) -> Sample:
        job = self.job_id()
        name = f"class3d-overhead-{os.getpid()}-C{job}"
        first_log = self.logs / f"C-{job}-attempt0.log"
        started = time.perf_counter()
        process = self._start(self._template_argv(name, job), first_log)
        root = self._root(job, process, first_log)
        killed_cpu = self._kill_when_complete(process, name, root, kill_after, first_log)
        killed = time.perf_counter() - started

        resumed_name = f"{name}-requeue"
        resumed = self._run(
            self._template_argv(resumed_name, job, restart=1),
            resumed_name,
            self.logs / f"C-{job}-attempt1.log",
        )
        history = read_history(root)
        scores = self._accuracy(root)
        cpu = (
            killed_cpu + resumed.cpu_seconds
            if killed_cpu is not None and resumed.cpu_seconds is not None
            else None
        )
        return Sample(
            "reclaimed",
            killed + resumed.seconds,
            scores[-1],
            cpu_seconds=cpu,
            attempts=[killed, resumed.seconds],
            resumed_from=[int(i) for i in history.get("resumed_from", [])],
            trajectory=scores,
        )

    def _kill_when_complete(
        self, process: subprocess.Popen, name: str, root: Path, iteration: int, log: Path
    ) -> float | None:
        """docker kill the job's container as soon as the iteration is a complete checkpoint;
        the container's CPU seconds read from the host just before.

        Polls cheaply (file existence) and parses only once every file is there, so the poll
        takes next to no CPU from the run it watches."""
        files = list(iteration_files(root, iteration, self.classes).values())
        cid_file = self.logs / f"{name}.cid"
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(
                    f"class3d_overhead: run ended before iteration {iteration} ({log})"
                )
            if all(path.is_file() for path in files):
                try:
                    check_iteration(root, iteration, self.classes)
                except CheckpointError:
                    pass
                else:
                    cpu = host_cgroup_cpu_seconds(cid_file.read_text().strip())
                    subprocess.run(["docker", "kill", name], capture_output=True, check=True)
                    process.wait()
                    return cpu
            time.sleep(0.05)
        subprocess.run(["docker", "kill", name], capture_output=True, check=False)
        raise SystemExit(f"class3d_overhead: iteration {iteration} not complete in time ({log})")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _listed(values: Sequence[float | None], digits: int = 1) -> str:
    return ", ".join("?" if v is None else f"{v:.{digits}f}" for v in values)


def _cpu_median(samples: Sequence[Sample]) -> float | None:
    values = [s.cpu_seconds for s in samples]
    return None if any(v is None for v in values) else _median([v or 0.0 for v in values])


def _figures(
    bench: Bench, runs: dict[str, list[Sample]], k: int, generated_seconds: float, repeats: int
) -> tuple[list[str], dict, bool]:
    n = bench.iterations
    template, bare, reclaimed = runs["template"], runs["bare"], runs["reclaimed"]
    walls = {kind: [s.seconds for s in samples] for kind, samples in runs.items()}
    a, b, c = (_median(walls[kind]) for kind in ("template", "bare", "reclaimed"))
    orchestration, reclaim = a / b, c / a
    reclaim_target, from_zero = 1 + 1 / n + 0.05, 1 + k / n
    cpu_a, cpu_b, cpu_c = (_cpu_median(runs[kind]) for kind in ("template", "bare", "reclaimed"))
    cpu_ratio = cpu_a / cpu_b if cpu_a is not None and cpu_b else None
    cpu_reclaim = cpu_c / cpu_a if cpu_c is not None and cpu_a else None
    uninterrupted = _median([s.accuracy for s in template])
    # In whole particles: 0.925 - 0.875 is 10 of 200 particles, not 0.05000000000000004.
    worst = max(abs(s.accuracy - uninterrupted) for s in reclaimed)
    gap = round(worst * bench.particles) / bench.particles
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
        return _listed([s.others_cpu_seconds for s in samples], 0)

    def ratio(value: float | None) -> str:
        return "?" if value is None else f"{value:.3f}"

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    lines = [
        f"Class3D overhead, RELION 5 in node containers as the job user: {bench.particles} "
        f"synthetic particles (K={bench.classes}), N={n} iterations, k={k}, --j {THREADS} "
        f"--pool {POOL}, {repeats} round(s) of A B C interleaved",
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
        f"  CPU s (container cgroup): A {_listed([s.cpu_seconds for s in template])}; "
        f"B {_listed([s.cpu_seconds for s in bare])}; "
        f"C {_listed([s.cpu_seconds for s in reclaimed])}",
        f"      medians: A/B = {ratio(cpu_ratio)}   C/A = {ratio(cpu_reclaim)}",
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
        "cpu_s": {
            kind: [None if s.cpu_seconds is None else round(s.cpu_seconds, 2) for s in samples]
            for kind, samples in runs.items()
        },
        "cpu_ratio": None if cpu_ratio is None else round(cpu_ratio, 4),
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
        "--particles-per-class", type=int, default=PARTICLES_PER_CLASS,
        help="size of the synthetic set (20 or more; K=2)",
    )  # fmt: skip
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the data set, runs and logs here"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.kill_after < args.iterations:
        parser.error("--kill-after must be at least 1 and below --iterations")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.particles_per_class < 20:
        parser.error("--particles-per-class must be at least 20")
    unavailable = docker_available()
    if unavailable is not None:
        print(f"class3d_overhead: needs Docker: {unavailable}", file=sys.stderr)
        return 2

    k = args.kill_after
    runs: dict[str, list[Sample]] = {"template": [], "bare": [], "reclaimed": []}
    with tempfile.TemporaryDirectory(prefix="class3d-overhead-") as tmp:
        work = args.workdir.resolve() if args.workdir else Path(tmp)
        with console.status("generating the synthetic data set in a node container"):
            started = time.perf_counter()
            try:
                project = make_synthetic(
                    SyntheticSpec(particles_per_class=args.particles_per_class),
                    work / "data",
                    "bench",
                )
            except JobContainerError as err:
                print(f"class3d_overhead: {err}", file=sys.stderr)
                return 2
            generated = time.perf_counter() - started
        bench = Bench(project, args.iterations)
        console.log(f"synthetic set: {bench.particles} particles, made in {generated:.1f} s")
        for round_ in range(1, args.repeats + 1):
            for kind in runs:
                label = f"round {round_}/{args.repeats} {kind}"
                with console.status(f"{label} (N={args.iterations})"):
                    if kind == "template":
                        sample = bench.template()
                    elif kind == "bare":
                        sample = bench.bare()
                    else:
                        sample = bench.reclaimed(k)
                runs[kind].append(sample)
                detail = f", CPU {_listed([sample.cpu_seconds])} s"
                if sample.others_cpu_seconds is not None:
                    detail += f", others {sample.others_cpu_seconds:.0f} CPU s"
                if sample.attempts:
                    detail += f" = {_listed(sample.attempts)} (resumed from {sample.resumed_from})"
                console.log(
                    f"{label}: {sample.seconds:.1f} s{detail}, accuracy {sample.accuracy:.3f}"
                )

    lines, summary, ok = _figures(bench, runs, k, generated, args.repeats)
    print("\n".join(lines))
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
