"""``relion-spot demo``: the whole product on the embedded cloud, with a spot reclaim on the way.

What happens, and what each step runs for real:
1. images and the Docker engine (scripts/setup-docker.sh, a no-op when current);
2. a ground-truthed 2-class particle set, made by RELION's relion_project in the node image;
3. the embedded cloud (relion_spot.local.embedded): moto as AWS, the controller container with
   slurmctld and the job intake's drainer, the reconciler playing EC2;
4. the Class3D submission through the intake queue, exactly as the CLI sends it; the controller
   preflights it and submits the rendered template to Slurm; the resume program launches a spot
   instance in moto; the reconciler boots it as a node container; RELION runs;
5. after iteration ``reclaim_after`` EC2 "reclaims" the instance: the node's spot watcher reads
   the notice from IMDS, drains the node and requeues the job; Slurm launches a fresh node and
   the job resumes from its last complete iteration;
6. the job's attempts are priced by the cost function's own code against moto's spot prices;
   the run is scored against the truth; the convergence plot is the job's own.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .campaign import CampaignSettings

from .. import tags
from ..slurm.spec import CPU_PARTITION, GPU_PARTITION
from ..slurm.squeue import SlurmJob

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_DOCKER = REPO_ROOT / "scripts" / "setup-docker.sh"
DEFAULT_WORK_DIR = REPO_ROOT / ".local" / "demo"
PREFIX = "relion-spot-demo"
PROJECT = "demo"
"""The project directory under the shared /data."""
JOB_TIMEOUT_SECONDS = 1500


class DemoError(RuntimeError):
    """The demo could not go on; the message says where and why."""


@dataclass(frozen=True)
class DemoSettings:
    iterations: int = 8
    """Enough for the K=2 set to classify (accuracy 0.94 at 8 in the overhead benchmark, with or
    without a reclaim after 4), and a warm demo within three minutes."""
    reclaim_after: int = 4
    """Reclaim the node once this many iterations are complete (0: no reclaim)."""
    particles_per_class: int = 100
    work_dir: Path = DEFAULT_WORK_DIR
    suspend_time: int = 30
    """Idle seconds before a node is terminated (the deployed minimum is 60)."""

    def check(self) -> None:
        if not 1 <= self.iterations <= 50:
            raise DemoError(f"--iterations {self.iterations}: give 1 to 50")
        if not 0 <= self.reclaim_after < self.iterations:
            raise DemoError(
                f"--reclaim-after {self.reclaim_after}: give 0 (no reclaim) up to "
                f"{self.iterations - 1} (one less than --iterations)"
            )
        if not 20 <= self.particles_per_class <= 2000:
            raise DemoError(f"--particles-per-class {self.particles_per_class}: give 20 to 2000")


@dataclass
class DemoResult:
    job_id: str = ""
    state: str = ""
    iterations: int = 0
    resolution_per_iteration: list[float | None] = field(default_factory=list)
    accuracy: float | None = None
    resumed_from: list[int] = field(default_factory=list)
    reclaims: int = 0
    reclaimed_at_iteration: int | None = None
    """The newest complete iteration once the reclaimed attempt had left its node: where the job
    must resume (RELION may finish one more iteration between the decision and the kill)."""
    nodes_launched: int = 0
    """GPU-partition nodes: the ones the job ran on (two with one reclaim)."""
    cpu_nodes_launched: int = 0
    """CPU-partition nodes: the image check's, when the image was not checked before."""
    cost_usd: float | None = None
    reclaimed_usd: float | None = None
    reclaimed_share: float | None = None
    cost_breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per component (compute, ebs, storage_io): dollars, reclaimed dollars, reclaimed share."""
    plot: str = ""
    classes_plot: str = ""
    """The classes' central slices with their share, resolution and accuracy (PNG)."""
    wall_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: setup, data, cloud, submit -> running, run, pricing."""
    failures: list[str] = field(default_factory=list)
    """The demo's own outcomes that did not hold (empty: every promise kept)."""
    relion_version: str | None = None
    """As the job's RELION reported it (the job's run history)."""
    launcher: str = ""
    """What the job ran RELION through (apptainer exec ... SIF), from the job's run history."""


Report = Callable[[str, dict[str, Any]], None]
"""Progress callback: (phase or event, details)."""


def _quiet(_: str, __: dict[str, Any]) -> None:
    return None


def ensure_images() -> None:
    """Engine up and images current: the project's own setup script (idempotent)."""
    done = subprocess.run(["bash", str(SETUP_DOCKER)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise DemoError(f"scripts/setup-docker.sh failed:\n{tail}")


def make_dataset(settings: DemoSettings, data_dir: Path) -> Path:
    """The synthetic set, made in a node container as the job user with RELION run as the jobs
    run it (``apptainer exec`` of the SIF in /containers, made here first if need be); its
    directory."""
    from ..local.job_container import JobContainerError, make_synthetic
    from ..relion.synthetic import SyntheticSpec

    spec = SyntheticSpec(classes=2, particles_per_class=settings.particles_per_class, seed=0)
    try:
        return make_synthetic(spec, data_dir, PROJECT)
    except JobContainerError as error:
        raise DemoError(str(error)) from error


def job_parameters(settings: DemoSettings, manifest: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's flags scaled to the set's small box (relion_spot.jobs.synthetic)."""
    from ..jobs.synthetic import SyntheticParams, class3d_parameters

    spec = manifest["spec"]
    made = SyntheticParams(
        project_dir=f"/data/{PROJECT}",
        classes=int(spec["classes"]),
        particles_per_class=int(spec["particles_per_class"]),
        seed=int(spec["seed"]),
    )
    return class3d_parameters(made, settings.iterations)


def start_cloud(work_dir: Path, suspend_time: int) -> Any:
    """The demo's embedded cloud (a 1-GPU cluster), named by its work directory."""
    from ..local.embedded import EmbeddedCloud, named_by
    from ..settings import Settings

    return EmbeddedCloud.start(
        prefix=named_by(PREFIX, work_dir),
        settings=Settings(gpus=(1,)),
        gpu_count=1,
        work_dir=work_dir,
        suspend_time=suspend_time,
    )


def run(settings: DemoSettings, report: Report = _quiet) -> DemoResult:
    from ..intake.client import submit, wait_for_acceptance
    from ..intake.table import IntakeTable
    from ..jobs.job_dir import Claim, Owner
    from ..jobs.job_dir import find as find_job_dir
    from ..local.embedded import INTAKE_TABLE
    from ..relion import score
    from ..relion.checkpoint import read_history
    from ..relion.progress import classes_path, plot_path, progress_path
    from ..relion.synthetic import load_manifest
    from ..slurm.local import listed_job, wait_until

    settings.check()
    result = DemoResult()
    started = time.monotonic()
    mark = started

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        result.phases[name] = round(now - mark, 1)
        mark = now

    report("setup", {})
    ensure_images()
    phase("setup")
    data_dir = settings.work_dir / "data"
    report("data", {"particles": 2 * settings.particles_per_class})
    project = make_dataset(settings, data_dir)
    manifest = load_manifest(project)
    phase("data")

    report("cloud", {})
    with start_cloud(settings.work_dir, settings.suspend_time) as cloud:
        phase("cloud")
        local = cloud.local
        sqs = cloud.client("sqs")
        table = IntakeTable(cloud.client("dynamodb"), INTAKE_TABLE)
        submission = submit(
            sqs,
            table,
            cloud.env["RELION_SPOT_INTAKE_QUEUE_URL"],
            parameters=job_parameters(settings, manifest),
            user="demo",
        )
        sid = submission.submission_id
        report("submitted", {"submission": sid})
        job_id = wait_for_acceptance(table, submission.submission_id, timeout=120)
        result.job_id = job_id
        report("accepted", {"job_id": job_id})

        def job() -> SlurmJob:
            return listed_job(local, job_id)

        wait_until(
            lambda: job().shown_state in ("RUNNING", "COMPLETED"),
            timeout=300,
            what=lambda: f"job {job_id} to start ({job().shown_state}, {job().reason})",
        )
        phase("submit_to_running")
        owner = Owner(cluster=cloud.cluster, slurm_job_id=job_id, submission_id=sid)
        claimed = wait_until(
            lambda: find_job_dir(project, owner),
            timeout=120,
            what=f"job {job_id} to claim its directory in {project}",
        )
        assert isinstance(claimed, Claim)
        run_root = claimed.directory / "run"
        reclaimed = False
        deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
        while True:
            listed = job()
            state = listed.shown_state
            record = _read_json(progress_path(run_root))
            done = int(record.get("current_iteration", 0)) if record else 0
            report(
                "running",
                {
                    "state": state,
                    "iteration": done,
                    "iterations": settings.iterations,
                    "resolution": record.get("resolution_angstrom") if record else None,
                    "node": listed.node_list,
                },
            )
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"):
                break
            if (
                settings.reclaim_after
                and not reclaimed
                and done >= settings.reclaim_after
                and state == "RUNNING"
            ):
                node = listed.node_list
                machine = cloud.reconciler.machines.get(node)
                if machine is not None:
                    restarts = listed.restarts
                    cloud.reconciler.reclaim(machine.instance_id)
                    reclaimed = True
                    result.reclaims += 1
                    report("reclaim", {"node": node, "after_iteration": done})
                    result.reclaimed_at_iteration = _left_node_at(
                        job, restarts, run_root, int(manifest["spec"]["classes"])
                    )
            if time.monotonic() > deadline:
                raise DemoError(f"job {job_id} did not finish within {JOB_TIMEOUT_SECONDS} s")
            time.sleep(2)
        result.state = state
        phase("run")
        partitions = [
            {t["Key"]: t["Value"] for t in i.get("Tags", [])}.get(tags.PARTITION)
            for i in cloud.instances()
        ]
        result.nodes_launched = partitions.count(GPU_PARTITION)
        result.cpu_nodes_launched = partitions.count(CPU_PARTITION)

        report("pricing", {})
        _price(cloud, job_id, state, result)
        phase("pricing")

    record = _read_json(progress_path(run_root)) or {}
    result.iterations = int(record.get("current_iteration", 0))
    result.resolution_per_iteration = [
        row.get("resolution_angstrom") for row in record.get("iterations", [])
    ]
    result.resumed_from = [int(i) for i in record.get("resumed_from", [])]
    history = read_history(run_root)
    result.relion_version = history.get("relion_version")
    result.launcher = str(history.get("launcher", ""))
    if plot_path(run_root).is_file():
        result.plot = str(plot_path(run_root))
    if classes_path(run_root).is_file():
        result.classes_plot = str(classes_path(run_root))
    scores = score.score_run(run_root, project / manifest["files"]["truth"])
    if scores:
        result.accuracy = round(scores[-1].accuracy, 3)
    result.wall_seconds = round(time.monotonic() - started, 1)
    result.failures = outcome_failures(settings, result)
    return result


MIN_ACCURACY = 0.90
"""Label-swap-invariant agreement with the truth the demo promises (K=2, SNR 1)."""


def _left_node_at(
    job: Callable[[], SlurmJob], restarts_before: int, run_root: Path, classes: int
) -> int | None:
    """Wait until the reclaimed attempt is off its node (requeued: restart count up, no longer
    completing), then read the newest complete iteration. Nothing writes the run until the next
    attempt has booted a node and run an iteration, so this is where the job must resume."""
    from ..relion.checkpoint import newest_complete_iteration
    from ..slurm.local import wait_until

    def requeued() -> bool:
        listed = job()
        return listed.restarts > restarts_before and "COMPLETING" not in listed.states

    wait_until(requeued, timeout=120, interval=0.1, what="the reclaimed attempt to be requeued")
    return newest_complete_iteration(run_root, classes)


def outcome_failures(settings: DemoSettings, result: DemoResult) -> list[str]:
    """What the demo promises, checked on its own result: one line per broken promise."""
    failures = []
    if result.state != "COMPLETED":
        failures.append(f"the job ended {result.state or 'in no known state'}, not COMPLETED")
    if result.iterations != settings.iterations:
        failures.append(f"{result.iterations} of {settings.iterations} iterations written")
    if settings.reclaim_after:
        if result.reclaims != 1:
            failures.append(f"{result.reclaims} spot reclaims happened, 1 was asked for")
        elif result.reclaimed_at_iteration is None:
            failures.append("no complete iteration was on disk when the reclaim took the node")
        elif result.resumed_from != [result.reclaimed_at_iteration]:
            failures.append(
                f"resumed after iterations {result.resumed_from or 'none'}, expected "
                f"[{result.reclaimed_at_iteration}] (the newest complete one at the reclaim)"
            )
        elif result.reclaimed_at_iteration < settings.reclaim_after:
            failures.append(
                f"the reclaim came after iteration {result.reclaimed_at_iteration}, "
                f"before the {settings.reclaim_after} asked for"
            )
    if result.accuracy is None or result.accuracy < MIN_ACCURACY:
        failures.append(f"accuracy {result.accuracy} against the truth is below {MIN_ACCURACY}")
    if not (result.relion_version or "").startswith("5."):
        failures.append(f"the job ran RELION {result.relion_version}, not RELION 5")
    if not result.launcher.startswith("apptainer exec"):
        failures.append(f"the job ran RELION through {result.launcher!r}, not apptainer exec")
    if not result.cost_usd or result.cost_usd <= 0:
        failures.append(f"the job was not priced (cost {result.cost_usd})")
    return failures


def _price(cloud: Any, job_id: str, final_state: str, result: DemoResult) -> None:
    item = price_job(cloud, job_id, final_state)
    result.cost_usd = float(item["estimate_usd"])
    result.reclaimed_usd = float(item["reclaimed_usd"])
    result.reclaimed_share = float(item["reclaimed_share"])
    result.cost_breakdown = item.get("cost_breakdown") or {}


def price_job(cloud: Any, job_id: str, final_state: str) -> dict[str, Any]:
    """The job's cost record by the cost function's own code, run as its Lambda would, against
    moto's records; priced at the on-demand ceiling (moto's spot market quotes a placeholder
    $0.00001/hour)."""
    from ..cost.handler import handle
    from ..cost.store import decode_cost, deserialize, job_key
    from ..local.embedded import COSTS_TABLE
    from ..slurm.local import wait_until

    dynamodb = cloud.client("dynamodb")
    key = job_key(cloud.cluster, job_id)

    def priced() -> dict[str, Any] | None:
        handle(
            {"action": "price-jobs", "jobs": [{"cluster": cloud.cluster, "job_id": job_id}]},
            cloud.cost_service(),
        )
        item = dynamodb.get_item(TableName=COSTS_TABLE, Key={"job": {"S": key}}).get("Item")
        if not item:
            return None
        cost = decode_cost(deserialize(item))
        # jobcomp writes the last attempt's record as the job ends: price once it is there.
        states = [attempt.get("state") for attempt in cost.get("attempts", [])]
        return cost if final_state in states else None

    item = wait_until(priced, timeout=60, interval=2, what=f"job {job_id}'s cost")
    assert isinstance(item, dict)
    return item


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def register(subparsers: Any) -> argparse.ArgumentParser:
    defaults = DemoSettings()
    parser = subparsers.add_parser(
        "demo",
        help="run RELION Class3D on the embedded local cloud, with a spot reclaim and resume",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--campaign",
        action="store_true",
        help="a whole campaign instead: Class3D, the auto-refine of the class it picks "
        "(reclaimed once), PostProcess against the true volume",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        help=f"Class3D iterations (default {defaults.iterations}; a campaign's 6)",
    )
    parser.add_argument(
        "--reclaim-after",
        type=int,
        help=f"reclaim the node after this many iterations (0: never; default "
        f"{defaults.reclaim_after}, a campaign's refinement 2)",
    )
    parser.add_argument("--particles-per-class", type=int, default=defaults.particles_per_class)
    parser.add_argument("--work-dir", type=Path, default=defaults.work_dir)
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON object on the last line"
    )
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    from .display import Display

    if args.campaign:
        return _campaign_main(args)
    defaults = DemoSettings()
    settings = DemoSettings(
        iterations=args.iterations if args.iterations is not None else defaults.iterations,
        reclaim_after=(
            args.reclaim_after if args.reclaim_after is not None else defaults.reclaim_after
        ),
        particles_per_class=args.particles_per_class,
        work_dir=args.work_dir,
    )
    refused = _refused(settings)
    if refused is not None:
        return refused
    display = Display(settings.iterations, stream=sys.stderr if args.json else sys.stdout)
    try:
        with display:
            result = run(settings, display.report)
    except DemoError as err:
        print(f"relion-spot demo: {err}", file=sys.stderr)
        return 1
    display.summary(result)
    return _verdict(result, result.failures, as_json=args.json)


def _refused(settings: DemoSettings | CampaignSettings) -> int | None:
    """Exit status 2 with one line when the settings are bad; None when they are good."""
    logging.basicConfig(level=logging.WARNING)
    try:
        settings.check()
    except DemoError as err:
        print(f"relion-spot demo: {err}", file=sys.stderr)
        return 2
    return None


def _verdict(result: Any, failures: list[str], *, as_json: bool) -> int:
    """Each broken promise on one line, the JSON object last when asked; 1 if any broke."""
    for failure in failures:
        print(f"relion-spot demo: FAILED: {failure}", file=sys.stderr)
    if as_json:
        print(json.dumps(asdict(result), sort_keys=True))
    return 1 if failures else 0


def _campaign_main(args: argparse.Namespace) -> int:
    from .campaign import campaign_settings, run_campaign, summary

    settings = campaign_settings(args)
    refused = _refused(settings)
    if refused is not None:
        return refused
    out = sys.stderr if args.json else sys.stdout

    def report(event: str, details: dict[str, Any]) -> None:
        shown = ", ".join(f"{k} {v}" for k, v in details.items())
        print(f"campaign: {event}{': ' + shown if shown else ''}", file=out, flush=True)

    try:
        result = run_campaign(settings, report)
    except DemoError as err:
        print(f"relion-spot demo: {err}", file=sys.stderr)
        return 1
    print(summary(result), file=out)
    return _verdict(result, result.failures, as_json=args.json)
