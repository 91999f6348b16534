"""The selftest's sequence, the same on a deployed stack and on the embedded cloud: permissions,
preconditions, a tiny ground-truthed data set made on the cluster (the synthetic job, on the CPU
partition, with the cluster's RELION image), a Class3D of it through the normal intake, an
interruption once an iteration is complete, completion with the job's own score against the
truth, the cost record and the return to zero nodes.

Everything it does to the cluster goes through a ``Backend`` (``cloud.AwsBackend`` or
``local.EmbeddedBackend``); every phase is timed and priced at the on-demand ceiling of the
instances alive during it (EC2 never bills spot above on-demand). Whatever happens, ``run``
ends the interruption it started and cancels a job that did not finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..catalog import INSTANCE_TYPES
from ..jobs.synthetic import SyntheticParams, class3d_parameters
from .permissions import ALLOWED
from .record import StoredChecks
from .verdicts import Observations, Verdict, judge, parse_job_output

TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
POLL_SECONDS = 2.0
DATA_SET = SyntheticParams(
    project_dir="/data/relion-spot-selftest", classes=2, particles_per_class=200, seed=0
)
"""The selftest's ground-truthed set (200 per class: measured uninterrupted, accuracy 0.88 at
iteration 4, 0.965 at 5, 0.98 at 6; with 100 per class 0.64, 0.75, 0.87 and a reclaimed run
ended at 0.845 after 8, under the RELION verdict's 0.90): made once per file system (a later
selftest finds it and its job ends at once), classified by every selftest into a new Class3D
job of that project."""


class SelftestError(RuntimeError):
    """The selftest could not go on; the message says where and why."""


class Refused(SelftestError):
    """A precondition failed before anything was launched."""


@dataclass(frozen=True)
class Instance:
    instance_id: str
    instance_type: str
    node: str


@dataclass(frozen=True)
class JobView:
    state: str
    """Slurm's word: PENDING, RUNNING, COMPLETED, ..."""
    iterations_done: int = 0
    iterations_requested: int = 0
    resumed_from: tuple[int, ...] = ()
    instance_id: str = ""
    """The instance the job runs on now ("" when it runs nowhere)."""


class Backend(Protocol):
    """What the selftest needs of a cluster."""

    @property
    def cluster(self) -> str: ...
    @property
    def image(self) -> str: ...

    gpu_expected: bool
    data_seconds: float
    """How long the data set's job may take, image job included (a new cluster builds it)."""
    interrupt_notice_seconds: float
    scale_to_zero_seconds: float
    cost_record_seconds: float

    def permission_checks(self) -> StoredChecks | None: ...
    def node_checks(self, instance_id: str) -> StoredChecks | None: ...
    def gpu_types(self) -> tuple[str, ...]: ...
    def gpu_vcpus_needed(self) -> int: ...
    def spot_quota_vcpus(self) -> float | None: ...
    def live_instances(self) -> list[Instance]: ...
    def submit(self, parameters: dict[str, Any], template: str) -> tuple[str, str]: ...
    def submission(self, submission_id: str) -> dict[str, Any]: ...
    def job(self, submission_id: str, job_id: str) -> JobView: ...
    def job_output(self, submission_id: str, job_id: str) -> str: ...
    def interrupt(self, instance_id: str) -> str: ...
    def end_interrupt(self, handle: str) -> None: ...
    def cancel(self, submission_id: str, job_id: str) -> None: ...
    def cost(self, job_id: str, final_state: str) -> tuple[float, float] | None: ...


@dataclass(frozen=True)
class SelftestOptions:
    gpu: bool = False
    interrupt: bool = False
    iterations: int = 6
    budget_usd: float | None = None
    job_timeout_seconds: float = 3600


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    usd: float = 0.0
    note: str = ""


@dataclass
class SelftestResult:
    checks: StoredChecks | None = None
    node_checks: StoredChecks | None = None
    """What the job's first node recorded at its start (relion_spot.selftest.node_check)."""
    phases: list[Phase] = field(default_factory=list)
    seen: Observations = field(default_factory=Observations)
    verdicts: list[Verdict] = field(default_factory=list)
    refused: str = ""
    cleanup: list[str] = field(default_factory=list)

    @property
    def total_usd(self) -> float:
        return sum(p.usd for p in self.phases)

    @property
    def permissions_ok(self) -> bool:
        return self.checks is not None and all(o.outcome == ALLOWED for o in self.checks.outcomes)


Report = Callable[[str, Any], None]


def on_demand_ceiling(instance_type: str) -> float:
    known = INSTANCE_TYPES.get(instance_type)
    return known.on_demand_usd_hour if known else 0.0


def modelled_usd(backend: Backend, options: SelftestOptions, seconds_per_iteration: float) -> float:
    """What the run can cost at most: the node's on-demand ceiling over boot, iterations, and
    with --interrupt the notice, a second boot and the iteration repeated (see README)."""
    from .cost_model import selftest_cost

    return selftest_cost(
        instance_type=max(backend.gpu_types(), key=on_demand_ceiling),
        iterations=options.iterations,
        interrupt=options.interrupt,
        seconds_per_iteration=seconds_per_iteration,
    ).total_usd


class _Clock:
    """Phase timing and the cost of the instances alive meanwhile, integrated per poll."""

    def __init__(self, backend: Backend, result: SelftestResult, report: Report) -> None:
        self.backend = backend
        self.result = result
        self.report = report
        self._last = time.monotonic()
        self.current: Phase | None = None
        self.live: list[Instance] = []

    def sample(self) -> list[Instance]:
        now = time.monotonic()
        rate = sum(on_demand_ceiling(i.instance_type) for i in self.live) / 3600
        if self.current is not None:
            self.current.usd += rate * (now - self._last)
        self._last = now
        self.live = self.backend.live_instances()
        return self.live

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        phase = Phase(name)
        self.result.phases.append(phase)
        self.current = phase
        started = time.monotonic()
        self.report("phase", phase)
        try:
            yield phase
        finally:
            self.sample()
            phase.seconds = round(time.monotonic() - started, 1)
            self.report("phase done", phase)

    def wait(self, done: Callable[[], Any], *, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.sample()
            value = done()
            if value:
                return value
            if time.monotonic() > deadline:
                raise SelftestError(f"gave up after {timeout:.0f} s waiting for {what}")
            time.sleep(POLL_SECONDS)


def run(backend: Backend, options: SelftestOptions, report: Report) -> SelftestResult:
    result = SelftestResult()
    result.seen = Observations(
        gpu_expected=backend.gpu_expected,
        image=backend.image,
        interrupt_requested=options.interrupt,
    )
    clock = _Clock(backend, result, report)
    with clock.phase("permissions") as phase:
        result.checks = backend.permission_checks()
        phase.note = _checks_note(result.checks)
    if not result.permissions_ok:
        result.refused = "a permission check did not pass: nothing was launched"
        return result
    if not options.gpu:
        return result
    try:
        with clock.phase("preconditions") as phase:
            phase.note = _preconditions(backend, options, clock)
    except Refused as err:
        phase.note = "refused"
        result.refused = str(err)
        return result
    handles: list[str] = []
    submission_id = job_id = ""
    seen = result.seen
    try:
        with clock.phase("data") as phase:
            phase.note = _make_data(backend, clock)
            parameters = class3d_parameters(DATA_SET, options.iterations)
        with clock.phase("submit") as phase:
            submission_id, job_id = backend.submit(parameters, "class3d")
            phase.note = f"Slurm job {job_id} (submission {submission_id})"
        with clock.phase("launch") as phase:
            gpu_types = set(backend.gpu_types())
            first = clock.wait(
                lambda: [i for i in clock.live if i.instance_type in gpu_types],
                timeout=600,
                what="the job's spot instance to launch",
            )
            seen.instances_launched = [i.instance_id for i in first]
            phase.note = ", ".join(f"{i.instance_id} ({i.instance_type})" for i in first)
        with clock.phase("bootstrap") as phase:
            view = clock.wait(
                lambda: _running(backend.job(submission_id, job_id)),
                timeout=900,
                what=f"job {job_id} to run on the node",
            )
            seen.job_running = True
            result.node_checks = _node_checks(backend, clock, view.instance_id)
            seen.node_checks = (
                [] if result.node_checks is None else list(result.node_checks.outcomes)
            )
            phase.note = (
                f"running on {view.instance_id or 'the node'}; node permission checks: "
                + _checks_note(result.node_checks).replace("the controller", "the node")
            )
        with clock.phase("first iteration") as phase:
            view = clock.wait(
                lambda: _iterated(backend.job(submission_id, job_id)),
                timeout=options.job_timeout_seconds,
                what=f"job {job_id}'s first iteration",
            )
            phase.note = f"iteration {view.iterations_done} of {view.iterations_requested}"
        if options.interrupt:
            with clock.phase("interruption") as phase:
                _interrupt(backend, clock, seen, submission_id, job_id, handles)
                phase.note = (
                    f"{seen.interrupted_instance} after iteration "
                    f"{seen.interrupted_after_iteration}; resumed on {seen.resumed_on}"
                )
        with clock.phase("run") as phase:
            view = clock.wait(
                lambda: _finished(backend.job(submission_id, job_id), seen),
                timeout=options.job_timeout_seconds,
                what=f"job {job_id} to finish",
            )
            seen.job_state = view.state
            seen.iterations_done = view.iterations_done
            seen.iterations_requested = view.iterations_requested
            seen.resumed_from = list(view.resumed_from)
            seen.runtime = parse_job_output(backend.job_output(submission_id, job_id))
            progress = backend.submission(submission_id).get("progress") or {}
            scored = progress.get("truth_accuracy")
            seen.accuracy = float(scored) if isinstance(scored, int | float) else None
            phase.note = f"{view.state}, {view.iterations_done} iterations"
        with clock.phase("cost record") as phase:
            priced = clock.wait(
                lambda: backend.cost(job_id, seen.job_state),
                timeout=backend.cost_record_seconds,
                what=f"job {job_id}'s cost record",
            )
            seen.cost_usd, seen.reclaimed_usd = priced
            phase.note = f"${seen.cost_usd:.4f}" if seen.cost_usd is not None else "none"
        with clock.phase("scale to zero") as phase:
            clock.wait(
                lambda: not clock.live,
                timeout=backend.scale_to_zero_seconds,
                what="the cluster's last node to be terminated",
            )
            seen.scaled_to_zero = True
            phase.note = "no node left"
    except SelftestError as err:
        seen.notes.append(str(err))
        if result.phases:
            result.phases[-1].note = f"FAILED: {err}"
        seen.live_instances_at_end = [i.instance_id for i in clock.live]
    finally:
        result.cleanup = _clean_up(backend, handles, submission_id, job_id, seen)
    result.verdicts = judge(seen)
    return result


def _make_data(backend: Backend, clock: _Clock) -> str:
    """The synthetic set's job through the intake, waited for; what it made, or SelftestError
    (its job cancelled if it had not ended)."""
    parameters = asdict(DATA_SET)
    submission_id, job_id = backend.submit(parameters, "synthetic")

    def ended() -> str | None:
        item = backend.submission(submission_id)
        if item.get("cancel_state") == "cancelled":
            raise SelftestError(
                f"the synthetic set's job {job_id} was cancelled: {item.get('cancel_message', '')}"
            )
        state = str((item.get("progress") or {}).get("state", ""))
        return state if state in ("FINISHED", "FAILED") else None

    try:
        state = clock.wait(
            ended,
            timeout=backend.data_seconds,
            what=f"job {job_id} to make the synthetic set (after the RELION image's job)",
        )
    except SelftestError:
        backend.cancel(submission_id, job_id)
        raise
    if state == "FAILED":
        tail = str(backend.submission(submission_id).get("log_tail", "")).strip().splitlines()[-3:]
        raise SelftestError(f"the synthetic set's job {job_id} failed: {' / '.join(tail)}")
    return (
        f"{DATA_SET.spec.particles} particles, K={DATA_SET.classes}, in "
        f"{DATA_SET.project_dir} (CPU job {job_id})"
    )


NODE_CHECK_SECONDS = 180.0
"""The node records its check beside slurmd's start; a job that already runs there waits for
it this long at most."""


def _node_checks(backend: Backend, clock: _Clock, instance_id: str) -> StoredChecks | None:
    if not instance_id:
        return None
    try:
        return clock.wait(
            lambda: backend.node_checks(instance_id),
            timeout=NODE_CHECK_SECONDS,
            what=f"node {instance_id}'s permission check",
        )
    except SelftestError:
        return None


def _checks_note(checks: StoredChecks | None) -> str:
    if checks is None:
        return "the controller has not recorded a check"
    allowed = sum(o.outcome == ALLOWED for o in checks.outcomes)
    return f"{allowed} of {len(checks.outcomes)} calls allowed"


def _preconditions(backend: Backend, options: SelftestOptions, clock: _Clock) -> str:
    needed = backend.gpu_vcpus_needed()
    quota = backend.spot_quota_vcpus()
    if quota is not None and quota < needed:
        raise Refused(
            f"the account's 'All G and VT Spot Instance Requests' quota is {quota:g} vCPUs; one "
            f"node needs {needed} (ask for more: relion-spot doctor names the request)"
        )
    if clock.sample():
        busy = ", ".join(i.instance_id for i in clock.live)
        raise Refused(
            f"the cluster has nodes running ({busy}): run the selftest on an idle cluster, so "
            "the interruption can only reach the selftest's own node"
        )
    from .cost_model import SECONDS_PER_ITERATION

    ceiling = modelled_usd(backend, options, SECONDS_PER_ITERATION)
    if options.budget_usd is not None and ceiling > options.budget_usd:
        raise Refused(
            f"the selftest may cost up to ${ceiling:.2f} (on-demand ceiling), over the budget "
            f"--budget {options.budget_usd:g}"
        )
    quota_text = "quota not applicable" if quota is None else f"quota {quota:g} vCPUs"
    return f"{quota_text}, {needed} needed; cluster idle; at most ${ceiling:.2f}"


def _running(view: JobView) -> JobView | None:
    if view.state in TERMINAL_STATES and view.state != "COMPLETED":
        raise SelftestError(f"the job ended {view.state} before it ran")
    return view if view.state in ("RUNNING", "COMPLETED") else None


def _iterated(view: JobView) -> JobView | None:
    if view.state in TERMINAL_STATES and view.state != "COMPLETED":
        raise SelftestError(f"the job ended {view.state}")
    done = view.iterations_done >= 1 and view.state == "RUNNING"
    return view if done or view.state == "COMPLETED" else None


def _finished(view: JobView, seen: Observations) -> JobView | None:
    return view if view.state in TERMINAL_STATES else None


def _interrupt(
    backend: Backend,
    clock: _Clock,
    seen: Observations,
    submission_id: str,
    job_id: str,
    handles: list[str],
) -> None:
    """Interrupt the job's node; ``handles`` gets the interruption at once, so it is ended
    whatever happens next."""
    view = backend.job(submission_id, job_id)
    if view.state != "RUNNING" or not view.instance_id:
        raise SelftestError(f"the job was {view.state}, not running on a node, when due to be "
                            "interrupted")  # fmt: skip
    target = view.instance_id
    handles.append(backend.interrupt(target))
    seen.interrupted_instance = target
    seen.interrupted_after_iteration = view.iterations_done

    def moved() -> JobView | None:
        now = backend.job(submission_id, job_id)
        if now.state in TERMINAL_STATES:
            return now
        on_new = now.state == "RUNNING" and now.instance_id and now.instance_id != target
        return now if on_new else None

    after = clock.wait(
        moved,
        timeout=backend.interrupt_notice_seconds + 900,
        what=f"job {job_id} to be requeued off {target} and run on a new node",
    )
    seen.resumed_on = after.instance_id
    clock.wait(
        lambda: target not in {i.instance_id for i in clock.live},
        timeout=backend.interrupt_notice_seconds + 300,
        what=f"the interrupted {target} to be terminated",
    )
    seen.interrupted_instance_gone = True


def _clean_up(
    backend: Backend, handles: list[str], submission_id: str, job_id: str, seen: Observations
) -> list[str]:
    done = []
    for handle in handles:
        backend.end_interrupt(handle)
        done.append(f"interruption {handle} ended")
    if job_id and seen.job_state not in TERMINAL_STATES:
        backend.cancel(submission_id, job_id)
        done.append(f"job {job_id} cancelled (its node is then terminated by Slurm's suspend)")
    return done
