"""``relion-spot demo --campaign``: a whole campaign on the embedded cloud, as a lab submits one.

The demo's synthetic K=2 set is made in a folder of the lab's (``<work dir>/lab``) and brought
onto the cluster with ``relion-spot stage`` (uploaded to the exchange bucket, imported by a CPU
job, compared byte for byte). Then ``submit campaign`` through the intake: Class3D on a GPU node,
the 3D auto-refine of the class it picks on a GPU node (reclaimed once mid-way: the node is
taken, the job requeued, and the refinement continues from its newest complete iteration of
both halves), then the PostProcess on a CPU node. Then ``relion-spot pull`` brings the
campaign's results into ``<work dir>/pulled`` through the exchange bucket, and each file is
compared byte for byte with the project's. It reports each step's state, wall time and cost, the
class picked, the gold-standard resolution, the resolution against the true volume and what was
pulled, and fails when a promise does not hold.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..slurm.squeue import SlurmJob
from .runner import (
    DEFAULT_WORK_DIR,
    JOB_TIMEOUT_SECONDS,
    DemoError,
    DemoSettings,
    Report,
    _quiet,
    _read_json,
    ensure_images,
    job_parameters,
    make_dataset,
    price_job,
    start_cloud,
)

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
MAX_TRUTH_RESOLUTION_ANGSTROM = 25.0
"""The sharpened map against the true volume (FSC 0.5) at least this fine: the set's Nyquist is
8 Å and its reference starts at 30 Å, so a refinement that does not align ends above it."""


@dataclass(frozen=True)
class CampaignSettings:
    iterations: int = 6
    """The Class3D's: enough for the K=2 set to separate its classes."""
    reclaim_after: int = 2
    """Reclaim the refinement's node once this many of its iterations are complete (0: never)."""
    particles_per_class: int = 100
    local_healpix_order: int = 3
    """The auto-refine's finest local search (7.5°): the set's box is 40 pixels of 4 Å."""
    work_dir: Path = DEFAULT_WORK_DIR
    suspend_time: int = 30

    def check(self) -> None:
        DemoSettings(
            iterations=self.iterations,
            reclaim_after=0,
            particles_per_class=self.particles_per_class,
        ).check()
        if not 0 <= self.reclaim_after <= 5:
            raise DemoError(
                f"--reclaim-after {self.reclaim_after}: give 0 (no reclaim) to 5 (iterations "
                "of the refinement; it converges after about eight on this set)"
            )


@dataclass
class StepResult:
    step: str
    submission_id: str
    job_id: str = ""
    state: str = ""
    wall_seconds: float | None = None
    cost_usd: float | None = None
    reclaimed_usd: float | None = None


@dataclass
class CampaignResult:
    steps: list[StepResult] = field(default_factory=list)
    class3d_accuracy: float | None = None
    picked_class: int | None = None
    picked_share: float | None = None
    refine_iterations: int = 0
    reclaims: int = 0
    reclaimed_at_iteration: int | None = None
    resumed_from: list[int] = field(default_factory=list)
    resolution_angstrom: float | None = None
    """Gold-standard (FSC 0.143, masked, phase-randomisation corrected), from PostProcess."""
    truth_resolution_angstrom: float | None = None
    """The sharpened map against the true volume (FSC 0.5)."""
    bfactor: float | None = None
    reported: dict[str, Any] = field(default_factory=dict)
    """What the PostProcess step's record in the intake table says (state, resolution, truth
    resolution): the job's last word through its node's forwarder, as ``status`` shows it."""
    cost_usd: float | None = None
    staged: dict[str, Any] = field(default_factory=dict)
    """What ``relion-spot stage`` brought onto the cluster: files, bytes, seconds, which differ."""
    pulled: dict[str, Any] = field(default_factory=dict)
    """What ``relion-spot pull`` brought back: files, bytes, folder, which differ from the
    project's, which expected results were missing."""
    wall_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


PULLED_RESULTS = (
    "postprocess.mrc",
    "postprocess_masked.mrc",
    "run_half1_class001_unfil.mrc",
    "run_half2_class001_unfil.mrc",
    "run_class001.mrc",
    "fsc.png",
)
"""What a pulled campaign must hold: the sharpened map, the half maps, the refined map, the FSC."""


def _context(cloud: Any) -> Any:
    """What the lab's commands run with (relion_spot.client), on this embedded cloud's stack
    outputs as a deployed stack's; their messages are kept out of the demo's output."""
    import io

    from ..client.cluster import handle_from_outputs
    from ..client.commands import Context
    from ..local.standing import stack_outputs

    handle = handle_from_outputs("relion-spot-demo", cloud.region, stack_outputs(cloud))
    return Context(handle, cloud, io.StringIO(), io.StringIO())


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}


def stage_lab_folder(cloud: Any, lab: Path, project: Path) -> dict[str, Any]:
    """``relion-spot stage LAB --project-dir /data/<project>`` as the CLI runs it
    (relion_spot.client.stage); then every file in the project against the lab's own bytes."""
    from ..client.stage import stage_folder

    started = time.monotonic()
    stage_folder(
        _context(cloud), lab, f"/data/{project.name}", user="demo", timeout=600.0, poll=1.0
    )
    mine, there = _files(lab), _files(project)
    return {
        "seconds": round(time.monotonic() - started, 1),
        "files": len(mine),
        "bytes": sum(p.stat().st_size for p in mine.values()),
        "differ": sorted(
            name
            for name, path in mine.items()
            if name not in there or there[name].read_bytes() != path.read_bytes()
        ),
    }


def pull_campaign(cloud: Any, campaign_id: str, project: Path, folder: Path) -> dict[str, Any]:
    """``relion-spot pull CAMPAIGN`` as the CLI runs it (relion_spot.client.pull), on this
    embedded cloud's stack outputs; then each pulled file against the project's own bytes."""
    from ..client.pull import pull_results

    shutil.rmtree(folder, ignore_errors=True)
    context = _context(cloud)
    started = time.monotonic()
    manifest = pull_results(
        context, campaign_id, folder, user="demo", timeout=600.0, poll=1.0
    ).manifest
    seconds = round(time.monotonic() - started, 1)
    exports = [p for p in folder.rglob("*") if p.is_file()]
    differ = [
        e.path
        for e in manifest.files
        if (project / e.path).is_file()
        and (project / e.path).read_bytes() != (folder / e.path).read_bytes()
    ]
    names = {Path(p).name for p in (e.path for e in manifest.files)}
    pictures = [e.path for e in manifest.files if e.path.endswith(".png")]
    return {
        "folder": str(folder),
        "seconds": seconds,
        "files": len(exports),
        "bytes": sum(p.stat().st_size for p in exports),
        "jobs": [d for _, d in manifest.jobs],
        "differ": differ,
        "missing": [n for n in PULLED_RESULTS if n not in names],
        "pictures_png": all(
            (folder / p).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pictures
        ),
    }


def run_campaign(settings: CampaignSettings, report: Report = _quiet) -> CampaignResult:
    from ..intake.client import submit, wait_for_acceptance
    from ..intake.table import IntakeTable
    from ..jobs.campaign import STEPS, step_submission_id
    from ..jobs.job_dir import Owner, find
    from ..local.embedded import INTAKE_TABLE
    from ..relion import score
    from ..relion.campaign import PICK_FILE, RESULT_FILE
    from ..relion.checkpoint import newest_complete_iteration, read_history
    from ..relion.synthetic import load_manifest
    from ..slurm.local import listed_job, wait_until

    settings.check()
    result = CampaignResult()
    started = time.monotonic()
    report("setup", {})
    ensure_images()
    demo = DemoSettings(
        iterations=settings.iterations,
        reclaim_after=0,
        particles_per_class=settings.particles_per_class,
        work_dir=settings.work_dir,
    )
    lab = make_dataset(demo, settings.work_dir / "lab")
    project = settings.work_dir / "data" / lab.name
    shutil.rmtree(project, ignore_errors=True)  # a run before this one's: staged afresh
    manifest = load_manifest(lab)
    parameters = {
        **job_parameters(demo, manifest),
        "refine_class": "best",
        "local_healpix_order": settings.local_healpix_order,
    }
    report("cloud", {})
    with start_cloud(settings.work_dir, settings.suspend_time) as cloud:
        report("stage", {})
        result.staged = stage_lab_folder(cloud, lab, project)
        table = IntakeTable(cloud.client("dynamodb"), INTAKE_TABLE)
        sent = submit(
            cloud.client("sqs"), table, cloud.env["RELION_SPOT_INTAKE_QUEUE_URL"],
            parameters=parameters, user="demo", template="campaign",
        )  # fmt: skip
        sid = sent.submission_id
        wait_for_acceptance(table, sid, timeout=120)
        for name in STEPS:
            step_id = step_submission_id(sid, name)
            record = table.get(step_id)
            if record is None or not record.job_id:
                raise DemoError(f"the campaign's {name} step was not accepted: {record}")
            result.steps.append(StepResult(name, step_id, record.job_id))
        report("submitted", {"jobs": {s.step: s.job_id for s in result.steps}})

        def job(job_id: str) -> SlurmJob:
            return listed_job(cloud.local, job_id)

        refine = result.steps[1]
        refine_root: Path | None = None
        step_started: dict[str, float] = {}
        deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
        while True:
            states = {s.step: job(s.job_id) for s in result.steps}
            for step in result.steps:
                state = states[step.step].shown_state
                if state == "RUNNING" and step.step not in step_started:
                    step_started[step.step] = time.monotonic()
                if state in ENDED and not step.state:
                    step.state = state
                    if step.step in step_started:
                        step.wall_seconds = round(time.monotonic() - step_started[step.step], 1)
                    report("step", {"step": step.step, "state": state})
            if all(s.state for s in result.steps):
                break
            refining = states["refine3d"]
            if refine_root is None and refining.shown_state == "RUNNING":
                owner = Owner(cluster="", slurm_job_id="", submission_id=refine.submission_id)
                claimed = find(project, owner)
                refine_root = claimed.directory / "run" if claimed else None
            if (
                settings.reclaim_after
                and not result.reclaims
                and refine_root is not None
                and refining.shown_state == "RUNNING"
                and (newest_complete_iteration(refine_root, 1, halves=True) or 0)
                >= settings.reclaim_after
            ):
                machine = cloud.reconciler.machines.get(refining.node_list)
                if machine is not None:
                    restarts = refining.restarts
                    cloud.reconciler.reclaim(machine.instance_id)
                    result.reclaims += 1

                    def requeued(before: int = restarts) -> bool:
                        now = job(refine.job_id)
                        return now.restarts > before and "COMPLETING" not in now.states

                    wait_until(requeued, timeout=120, interval=0.1, what="the refinement's requeue")
                    result.reclaimed_at_iteration = newest_complete_iteration(
                        refine_root, 1, halves=True
                    )
                    report("reclaim", {"after_iteration": result.reclaimed_at_iteration})
            if time.monotonic() > deadline:
                raise DemoError(f"the campaign did not end within {JOB_TIMEOUT_SECONDS} s")
            time.sleep(2)
        report("pricing", {})
        for step in result.steps:
            if step.state == "COMPLETED":
                priced = price_job(cloud, step.job_id, step.state)
                step.cost_usd = round(float(priced["estimate_usd"]), 6)
                step.reclaimed_usd = round(float(priced["reclaimed_usd"]), 6)
        costs = [s.cost_usd for s in result.steps if s.cost_usd is not None]
        result.cost_usd = round(sum(costs), 6) if costs else None
        result.reported = _reported(cloud, result.steps[2].submission_id)
        if all(s.state == "COMPLETED" for s in result.steps):
            report("pull", {})
            result.pulled = pull_campaign(cloud, sid, project, settings.work_dir / "pulled")

    class3d_dir = find(project, Owner(cluster="", slurm_job_id="", submission_id=sid))
    if class3d_dir is not None:
        scores = score.score_run(
            class3d_dir.directory / "run", project / manifest["files"]["truth"]
        )
        result.class3d_accuracy = round(scores[-1].accuracy, 3) if scores else None
    if refine_root is not None:
        pick = _read_json(refine_root.parent / PICK_FILE) or {}
        result.picked_class, result.picked_share = pick.get("chosen"), pick.get("share")
        history = read_history(refine_root)
        result.resumed_from = [int(i) for i in history.get("resumed_from", [])]
        result.refine_iterations = newest_complete_iteration(refine_root, 1, halves=True) or 0
    post = find(
        project, Owner(cluster="", slurm_job_id="", submission_id=result.steps[2].submission_id)
    )
    figures = _read_json(post.directory / RESULT_FILE) if post is not None else None
    if figures:
        result.resolution_angstrom = figures.get("resolution_angstrom")
        result.truth_resolution_angstrom = figures.get("truth_resolution_angstrom")
        result.bfactor = figures.get("bfactor")
    result.wall_seconds = round(time.monotonic() - started, 1)
    result.failures = campaign_failures(settings, result)
    return result


def _reported(cloud: Any, submission_id: str) -> dict[str, Any]:
    """The step's progress as its record holds it, once the node's forwarder has flushed its
    last word (the Epilog's flush runs as the job ends)."""
    from ..intake.table import submission_item
    from ..local.embedded import INTAKE_TABLE
    from ..slurm.local import wait_until

    dynamodb = cloud.client("dynamodb")

    def final() -> dict[str, Any] | None:
        progress = submission_item(dynamodb, INTAKE_TABLE, submission_id).get("progress") or {}
        return progress if progress.get("state") in ("FINISHED", "FAILED") else None

    progress = wait_until(final, timeout=60, interval=1, what="the PostProcess's last word")
    assert isinstance(progress, dict)
    names = ("state", "resolution_angstrom", "truth_resolution_angstrom", "bfactor")
    return {name: progress.get(name) for name in names}


def campaign_failures(settings: CampaignSettings, result: CampaignResult) -> list[str]:
    """What the campaign demo promises, checked on its own result: one line per broken one."""
    failures = [
        f"step {s.step} (job {s.job_id}) ended {s.state or 'in no known state'}, not COMPLETED"
        for s in result.steps
        if s.state != "COMPLETED"
    ]
    if settings.reclaim_after:
        if result.reclaims != 1:
            failures.append(f"{result.reclaims} reclaims of the refinement, 1 was asked for")
        elif result.resumed_from != [result.reclaimed_at_iteration]:
            failures.append(
                f"the refinement resumed after {result.resumed_from or 'no iteration'}, "
                f"expected [{result.reclaimed_at_iteration}] (newest complete at the reclaim)"
            )
    if result.picked_class is None:
        failures.append("no class was picked for the refinement")
    truth = result.truth_resolution_angstrom
    if truth is None or truth > MAX_TRUTH_RESOLUTION_ANGSTROM:
        failures.append(
            f"the map against the true volume is {truth} Å, not {MAX_TRUTH_RESOLUTION_ANGSTROM} Å "
            "or finer"
        )
    if result.resolution_angstrom is None:
        failures.append("PostProcess reported no gold-standard resolution")
    told = result.reported
    if told.get("state") != "FINISHED" or told.get("resolution_angstrom") != (
        result.resolution_angstrom
    ):
        failures.append(f"the PostProcess's record says {told}, not what it wrote")
    if not result.cost_usd or result.cost_usd <= 0:
        failures.append(f"the campaign was not priced (cost {result.cost_usd})")
    if result.staged.get("differ") != []:
        failures.append(f"the lab's folder was not staged whole: {result.staged}")
    pulled = result.pulled
    if not pulled:
        failures.append("the campaign's results were not pulled")
    elif pulled["differ"] or pulled["missing"] or not pulled["pictures_png"]:
        failures.append(
            f"the pulled results differ from the project's ({pulled['differ']}), lack "
            f"{pulled['missing']}, or hold a picture that is no PNG"
        )
    return failures


def summary(result: CampaignResult) -> str:
    lines = ["campaign on the embedded cloud:"]
    for s in result.steps:
        cost = f"${s.cost_usd:.5f}" if s.cost_usd is not None else "-"
        wall = f"{s.wall_seconds:.0f} s" if s.wall_seconds is not None else "-"
        lines.append(f"  {s.step:<12} job {s.job_id:<4} {s.state:<10} {wall:>7}  {cost}")
    lines += [
        f"  Class3D accuracy against the truth: {result.class3d_accuracy}",
        f"  refined class {result.picked_class} ({result.picked_share}); "
        f"{result.refine_iterations} iterations; resumed after {result.resumed_from}",
        f"  PostProcess: {result.resolution_angstrom} Å gold-standard (FSC 0.143), "
        f"{result.truth_resolution_angstrom} Å against the true volume (FSC 0.5), "
        f"B-factor {result.bfactor}",
        f"  cost (on-demand ceiling): ${result.cost_usd}; wall {result.wall_seconds:.0f} s",
    ]
    if result.staged:
        lines.append(
            f"  staged: {result.staged['files']} files, {result.staged['bytes']} bytes in "
            f"{result.staged['seconds']:.0f} s from the lab's folder, identical on the cluster"
            if not result.staged["differ"]
            else f"  staged: files that differ on the cluster: {result.staged['differ']}"
        )
    if result.pulled:
        lines.append(
            f"  pulled: {result.pulled['files']} files, {result.pulled['bytes']} bytes in "
            f"{result.pulled['seconds']:.0f} s, identical to the project's, into "
            f"{result.pulled['folder']}"
            if not result.pulled["differ"]
            else f"  pulled: files that differ from the project's: {result.pulled['differ']}"
        )
    return "\n".join(lines)


def campaign_settings(args: Any) -> CampaignSettings:
    defaults = CampaignSettings()
    return CampaignSettings(
        iterations=args.iterations if args.iterations is not None else defaults.iterations,
        reclaim_after=(
            args.reclaim_after if args.reclaim_after is not None else defaults.reclaim_after
        ),
        particles_per_class=args.particles_per_class,
        work_dir=args.work_dir,
    )
