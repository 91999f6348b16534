"""From a submission's parameters to the sbatch script, checked by preflight first.

The script is relion_spot.jobs.class3d's template rendered for this cluster's GPU node group
(the instance types come from the cluster spec the controller already receives). Preflight checks
exactly the relion_refine arguments that script will run, against the project directory as the
controller sees it: the nodes' /data is ``data_root`` here. Where the controller does not see the
data, the job is accepted without preflight and the record says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from relion_spot.estimate.idle import load_prices
from relion_spot.estimate.job import JobShape, predict
from relion_spot.jobs import job_dir
from relion_spot.jobs.campaign import CampaignParams, render_postprocess, render_refine
from relion_spot.jobs.class3d import Mode, NodeShape, command_words, render
from relion_spot.jobs.export import ExportParams, render_export
from relion_spot.jobs.imports import ImportParams, render_import
from relion_spot.jobs.parameters import Class3dParams, JobParameterError
from relion_spot.jobs.select import SelectParams, render_select
from relion_spot.jobs.stage import StageParams, render_stage
from relion_spot.jobs.synthetic import SyntheticParams, render_synthetic
from relion_spot.relion import preflight, select, synthetic
from relion_spot.slurm.spec import GPU_PARTITION, ClusterSpec

from .config import NODE_DATA_DIR

PROGRAMS = ("relion_refine", "relion_refine_mpi")


class JobRejected(ValueError):
    """The job cannot run as asked; the message is for the user, verbatim."""


def _refused(error: Exception, here: Path, project_dir: str) -> JobRejected:
    """A preflight refusal, naming paths as the nodes see them (project_dir), not the
    controller's mount of them."""
    return JobRejected(f"preflight: {str(error).replace(str(here), project_dir)}")


@dataclass(frozen=True)
class LaterStep:
    """A campaign's step after its first: submitted after the step before it (afterok)."""

    step: str
    submission_id: str
    script: str


@dataclass(frozen=True)
class PreparedJob:
    script: str
    note: str
    """What preflight found (or why it did not run), kept in the accepted record."""
    needs_image: bool = False
    """The job runs RELION from the cluster's image: it waits for that image's check."""
    later: tuple[LaterStep, ...] = ()
    """A campaign's further steps, in order, each after the one before."""


@dataclass(frozen=True)
class JobPreparer:
    instance_types: tuple[str, ...]
    """The GPU node group's types: the job's shape, and what preflight sizes GPU and NVMe for."""
    mode: Mode = "cloud"
    image: str | None = None
    """The RELION image source; None: the mode's default (relion_spot.jobs.class3d)."""
    data_root: Path | None = None
    stage_buckets: tuple[str, ...] | None = None
    """S3 buckets the nodes may read; None: not known here, so not checked."""

    @classmethod
    def from_spec(
        cls,
        spec: ClusterSpec,
        *,
        mode: Mode = "cloud",
        image: str | None = None,
        data_root: Path | None = None,
        stage_buckets: tuple[str, ...] | None = None,
    ) -> JobPreparer:
        gpu = next((p for p in spec.partitions if p.name == GPU_PARTITION), None)
        if gpu is None:
            gpu = spec.default_partition
        return cls(
            instance_types=tuple(gpu.instance_types),
            mode=mode,
            image=image,
            data_root=data_root,
            stage_buckets=stage_buckets,
        )

    def __call__(
        self,
        params: Class3dParams
        | StageParams
        | SelectParams
        | SyntheticParams
        | CampaignParams
        | ExportParams
        | ImportParams,
    ) -> PreparedJob:
        if isinstance(params, CampaignParams):
            return self._campaign(params)
        if isinstance(params, SyntheticParams):
            return PreparedJob(
                script=render_synthetic(params, mode=self.mode, image=self.image),
                note=self._check_synthetic(params),
                needs_image=True,
            )
        if isinstance(params, ImportParams):
            return PreparedJob(
                script=render_import(params),
                note=f"importing the uploaded folder into {params.project_dir} on the CPU "
                "partition",
            )
        if isinstance(params, ExportParams):
            return PreparedJob(script=render_export(params), note=self._check_export(params))
        if isinstance(params, SelectParams):
            pinned, checked = self._check_selection(params)
            return PreparedJob(script=render_select(pinned), note=checked)
        if isinstance(params, StageParams):
            self._check_stage_source(params.source)
            return PreparedJob(
                script=render_stage(params),
                note=f"staging {params.source} into {params.dest} on the CPU partition",
            )
        if "--blush" in params.extra_flags and self.image is None:
            raise JobRejected(
                "parameter extra_flags: --blush needs RELION's Blush environment (PyTorch and "
                "its model weights), which the project's RELION image does not carry; deploy "
                "with -c relion_image=<an image that has it> to use Blush"
            )
        note: str | None = None
        if params.continue_from is not None:
            params, note = self._continuation(params)
        if params.dataset is not None:
            self._check_stage_source(params.dataset, "dataset")
            note = (
                f"preflight on the node: the data set {params.dataset} is copied to its scratch, "
                "unpacked and its particles STAR and reference map checked before RELION starts"
            )
        try:
            shape = NodeShape.for_types(self.instance_types)
            script = render(shape, params, mode=self.mode, image=self.image)
            words = command_words(shape, params, mode=self.mode)
        except JobParameterError as err:
            raise JobRejected(str(err)) from None
        if note is None:
            note = self._preflight(params, words)
        return PreparedJob(script=script, note=note, needs_image=True)

    def _campaign(self, params: CampaignParams) -> PreparedJob:
        """The Class3D, preflighted as any; then the later steps."""
        first = self(params.class3d)
        later = self.later_steps(params)
        rule = "the best class" if params.refine_class == "best" else f"class {params.refine_class}"
        return replace(
            first,
            note=f"{first.note}; then a 3D auto-refine of {rule} (submission "
            f"{later[0].submission_id}) and its PostProcess (submission {later[1].submission_id})",
            later=later,
        )

    def later_steps(self, params: CampaignParams) -> tuple[LaterStep, ...]:
        """The refinement on the GPU partition and the PostProcess on the CPU partition, each
        naming the step before it by its submission id; rendered from the parameters and the
        node group alone (no preflight: a drain that finds the campaign's first step in Slurm
        already submits these on data the first step may have changed)."""
        refine_id, post_id = params.step_id("refine3d"), params.step_id("postprocess")
        try:
            shape = NodeShape.for_types(self.instance_types)
            later = (
                LaterStep(
                    "refine3d",
                    refine_id,
                    render_refine(shape, params.refine_step, mode=self.mode, image=self.image),
                ),
                LaterStep(
                    "postprocess",
                    post_id,
                    render_postprocess(
                        params.class3d.project_dir,
                        refine_id,
                        campaign_id=params.submission_id,
                        mode=self.mode,
                        image=self.image,
                    ),
                ),
            )
        except JobParameterError as err:
            raise JobRejected(str(err)) from None
        return later

    def _continuation(self, params: Class3dParams) -> tuple[Class3dParams, str]:
        """The run to continue, checked here (complete at the iteration, stopping beyond it),
        with the iteration named when only the job was: what the job will --continue from."""
        run, iteration = params.continued_run()
        here = self._project_here(params.project_dir)
        if isinstance(here, str):
            if iteration is None:
                raise JobRejected(
                    f"parameter continue_from = {params.continue_from!r}: name the iteration "
                    f"({run}:N); the controller cannot look for the newest ({here})"
                )
            return params, here
        try:
            _, found, classes = select.complete_iteration(here, run, iteration)
            skip_align = select.run_setting(here, run, found, "rlnDoSkipAlign")
        except select.SelectError as err:
            raise _refused(err, here, params.project_dir) from None
        if params.iter <= found:
            raise JobRejected(
                f"parameter iter = {params.iter} is not valid: {run} is at iteration {found}; "
                "give the iteration to stop at, beyond it"
            )
        checked = self._continued_inputs(params, here, run, found)
        changes: dict[str, object] = {"continue_from": f"{run}:{found}"}
        if skip_align and "skip_align" not in params.changed:
            # RELION turns it off on --continue unless it is given again.
            changes |= {"skip_align": True, "changed": (*params.changed, "skip_align")}
        try:
            named = replace(params, **changes)  # type: ignore[arg-type]
        except JobParameterError as err:
            raise JobRejected(str(err)) from None
        return named, (
            f"preflight ok: continuing {run} (K={classes}) from iteration {found} to "
            f"{params.iter}; particles, reference and K are the run's own"
            + "".join(f"; {line}" for line in checked)
        )

    def _continued_inputs(
        self, params: Class3dParams, here: Path, run: str, iteration: int
    ) -> list[str]:
        """What a continuation changes that RELION reads from files or sizes by the box: a new
        solvent mask on the run's grid, a mask diameter inside its box."""
        class_map = here / run / f"{select.RUN_NAME}_it{iteration:03d}_class001.mrc"
        try:
            box, angpix = preflight.read_reference(class_map)
            lines = []
            if "particle_diameter" in params.changed and not (
                0 < params.particle_diameter <= box * angpix
            ):
                raise preflight.PreflightError(
                    f"--particle_diameter {params.particle_diameter:g} Å does not fit the run's "
                    f"box ({box} px x {angpix:g} Å = {box * angpix:g} Å)"
                )
            if "solvent_mask" in params.changed and params.solvent_mask is not None:
                lines.append(preflight.check_mask(here / params.solvent_mask, box, angpix))
        except preflight.PreflightError as err:
            raise _refused(err, here, params.project_dir) from None
        return lines

    def _check_synthetic(self, params: SyntheticParams) -> str:
        """A synthetic set goes into a new or empty project, or one that holds the same set
        (then the job has nothing to do): a lab's project is never overwritten."""
        spec = params.spec
        made = (
            f"{spec.classes} classes x {spec.particles_per_class} particles (box {spec.box}, "
            f"{spec.angpix:g} Å/px, seed {spec.seed}) into {params.project_dir} on the CPU "
            "partition"
        )
        here = self._project_here(params.project_dir)
        if isinstance(here, str):
            return f"{made}; {here}"
        if synthetic.made_with(here, spec):
            return f"{made}: it is there already, the job finds it and ends"
        if here.is_file() or (here.is_dir() and any(here.iterdir())):
            raise JobRejected(
                f"parameter project_dir = {params.project_dir!r} is not valid: it already holds "
                "other files; a synthetic set is made only in a new or empty project"
            )
        return made

    def _check_stage_source(self, source: str, name: str = "source") -> None:
        """An s3:// source must be a bucket the nodes may read: refused here, one line, rather
        than an AccessDenied on a CPU node launched for nothing."""
        if self.stage_buckets is None or not source.startswith("s3://"):
            return
        bucket = source.removeprefix("s3://").split("/", 1)[0]
        if bucket in self.stage_buckets:
            return
        allowed = ", ".join(self.stage_buckets) if self.stage_buckets else "none"
        raise JobRejected(
            f"parameter {name} = {source!r} is not valid: bucket {bucket!r} is not one the nodes "
            f"may read (this cluster's stage_buckets: {allowed}); deploy with "
            f"-c stage_buckets=<buckets> to grant it"
        )

    def _project_here(self, project_dir: str) -> Path | str:
        """The project as the controller sees it, or why preflight cannot look."""
        if self.data_root is None:
            return f"preflight skipped: the controller is not told where it sees {NODE_DATA_DIR}"
        if not self.data_root.is_dir():
            return (
                f"preflight skipped: {self.data_root} (the nodes' {NODE_DATA_DIR}) is not "
                f"mounted on the controller"
            )
        try:
            inside = PurePosixPath(project_dir).relative_to(NODE_DATA_DIR)
        except ValueError:
            return (
                f"preflight skipped: project_dir {project_dir} is outside {NODE_DATA_DIR}, "
                "the only data the controller sees"
            )
        return self.data_root / inside

    def _check_selection(self, params: SelectParams) -> tuple[SelectParams, str]:
        """The run exists here with a complete iteration and the classes are among its K:
        refused now, not on a CPU node launched for nothing. The job is pinned to the iteration
        checked (a run still going would otherwise give a newer one, whose class numbers may
        mean other classes, and a requeue yet another)."""
        here = self._project_here(params.project_dir)
        if isinstance(here, str):
            return params, here
        try:
            chosen = select.plan(here, params.run, params.classes, params.iteration)
        except select.SelectError as err:
            raise _refused(err, here, params.project_dir) from None
        return replace(params, iteration=chosen.iteration), (
            f"preflight ok: classes {','.join(map(str, chosen.chosen))} of {params.run} "
            f"(K={chosen.classes}) at iteration {chosen.iteration}, on the CPU partition"
        )

    def _check_export(self, params: ExportParams) -> str:
        """Each job has a directory here: refused now, not on a CPU node. Only the claims are
        read (bounded, no link followed): the drainer is root on files jobs write, so what the
        results are is the export job's to find, as the job user."""
        here = self._project_here(params.project_dir)
        if isinstance(here, str):
            return here
        taken = []
        for submission in params.submissions:
            claimed = job_dir.find(here, job_dir.Owner("", "", submission))
            if claimed is None:
                raise JobRejected(
                    f"preflight: no job directory of {params.project_dir} is claimed by "
                    f"submission {submission}: its job has not started in this project"
                )
            taken.append(claimed.directory.relative_to(here).as_posix())
        return "preflight ok: exporting " + ", ".join(taken) + " on the CPU partition"

    def _preflight(self, params: Class3dParams, words: Sequence[str]) -> str:
        here = self._project_here(params.project_dir)
        if isinstance(here, str):
            return here
        start = next(i for i, w in enumerate(words) if PurePosixPath(w).name in PROGRAMS)
        try:
            report = preflight.check(
                list(words[start + 1 :]), project=here, instance_types=self.instance_types
            )
        except preflight.PreflightError as err:
            raise _refused(err, here, params.project_dir) from None
        p = report.particles
        return (
            f"preflight ok: {p.count} particles, box {p.box} at {p.angpix:g} A/px, "
            f"K={report.classes}, {report.iterations} iterations; GPU ~"
            f"{report.gpu_gib_needed:.1f} GiB, scratch {report.scratch_gb_needed:.1f} GB"
            + "".join(f"; {note}" for note in report.notes).replace(str(here), params.project_dir)
            + "; predicted (relion_spot.estimate.job, a model): "
            + "; ".join(self._predictions(params, report))
        )

    def _predictions(self, params: Class3dParams, report: preflight.Report) -> list[str]:
        shape = JobShape(
            particles=report.particles.count, box=report.particles.box, classes=report.classes,
            iterations=report.iterations, healpix_order=params.healpix_order,
            offset_range=params.offset_range, offset_step=params.offset_step,
        )  # fmt: skip
        prices = load_prices()
        return [predict(shape, kind, prices).line() for kind in self.instance_types]
