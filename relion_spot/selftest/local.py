"""The selftest on the embedded cloud (``--stack local``): the same flow as on a deployed stack,
over the demo's pieces with short settings: the embedded cloud (moto, the controller
container, the reconciler), the ground-truthed set made by the synthetic job on the CPU
partition and the Class3D job, both through the intake queue, their reports through the nodes'
forwarder into the intake table, and the cost function's own code for the record.

Where the cloud differs, and how:
- The interruption: AWS FIS's StartExperiment is not in moto. ``interrupt`` is the one seam:
  where the deployed stack's backend starts the FIS experiment, this one has the reconciler
  send the notice FIS would (the local metadata service serves it to the node's spot watcher)
  and terminate the instance after the notice period.
- The permission check: the embedded cloud's controller image may predate the check, so it is
  run here against moto with the controller's own environment, and recorded and read back
  through the intake table as on a deployed stack. moto answers DryRun without IAM.
- No GPU: the GPU verdict is "not tested"; the quota check does not apply.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import tags
from ..catalog import INSTANCE_TYPES
from ..powersave.config import PowerSaveConfig
from ..slurm.squeue import SlurmJob
from . import record
from .flow import Instance, JobView, SelftestError
from .permissions import check_powersave
from .record import StoredChecks

PREFIX = "relion-spot-selftest"
DEFAULT_WORK_DIR = Path(__file__).resolve().parents[2] / ".local" / "selftest"
NOTICE_SECONDS = 20.0
"""The local notice period: the node's watcher requeues the job at once, as on EC2; the
instance then goes after this many seconds instead of EC2's 120 (short settings)."""
SUSPEND_SECONDS = 30
"""SuspendTime here (the deployed minimum is 60): how long an idle node waits to go."""


@dataclass
class EmbeddedBackend:
    """``flow.Backend`` over a running ``EmbeddedCloud``."""

    cloud: Any
    data_dir: Path
    work_dir: Path
    gpu_expected = False
    data_seconds = 900.0
    interrupt_notice_seconds = NOTICE_SECONDS
    scale_to_zero_seconds = float(SUSPEND_SECONDS + 180)
    cost_record_seconds = 90.0

    @property
    def cluster(self) -> str:
        return str(self.cloud.cluster)

    @property
    def image(self) -> str:
        from ..jobs.class3d import LOCAL_IMAGE

        return LOCAL_IMAGE

    def _config(self) -> PowerSaveConfig:
        return PowerSaveConfig.from_env(
            {**self.cloud.env, "RELION_SPOT_POWERSAVE_STATE_DIR": str(self.work_dir / "probe")}
        )

    def permission_checks(self) -> StoredChecks | None:
        from ..local.embedded import INTAKE_TABLE

        outcomes = check_powersave(self.cloud.client("ec2"), self._config())
        dynamodb = self.cloud.client("dynamodb")
        record.store(dynamodb, INTAKE_TABLE, record.CONTROLLER, outcomes)
        return record.load(dynamodb, INTAKE_TABLE)

    def node_checks(self, instance_id: str) -> StoredChecks | None:
        """What the node container recorded at its start, against moto (as a node does)."""
        from ..local.embedded import INTAKE_TABLE
        from .node_check import NODE_CHECKER

        checker = NODE_CHECKER.format(instance_id=instance_id)
        return record.load(self.cloud.client("dynamodb"), INTAKE_TABLE, checker)

    def gpu_types(self) -> tuple[str, ...]:
        groups = self._config().groups
        return tuple(t for g in groups.values() if g.gpus_per_node for t in g.instance_types)

    def gpu_vcpus_needed(self) -> int:
        return max((INSTANCE_TYPES[t].vcpus for t in self.gpu_types() if t in INSTANCE_TYPES),
                   default=0)  # fmt: skip

    def spot_quota_vcpus(self) -> float | None:
        return None  # moto's account has no spot quota to ask about

    def live_instances(self) -> list[Instance]:
        return [
            Instance(
                i["InstanceId"],
                i.get("InstanceType", ""),
                next((t["Value"] for t in i.get("Tags", []) if t["Key"] == tags.NODE), ""),
            )
            for i in self.cloud.instances()
            if i["State"]["Name"] in ("pending", "running")
        ]

    @property
    def project(self) -> Path:
        """The selftest's project as this machine sees the nodes' /data."""
        from .flow import DATA_SET

        return self.data_dir / DATA_SET.project_dir.removeprefix("/data/")

    def submit(self, parameters: dict[str, Any], template: str) -> tuple[str, str]:
        from ..intake.client import (
            SubmissionPending,
            SubmissionRejected,
            submit,
            wait_for_acceptance,
        )
        from ..intake.table import IntakeTable
        from ..local.embedded import INTAKE_TABLE

        table = IntakeTable(self.cloud.client("dynamodb"), INTAKE_TABLE)
        submission = submit(
            self.cloud.client("sqs"),
            table,
            self.cloud.env["RELION_SPOT_INTAKE_QUEUE_URL"],
            parameters=parameters,
            user="selftest",
            template=template,
        )
        try:
            job_id = wait_for_acceptance(table, submission.submission_id, timeout=120)
        except (SubmissionRejected, SubmissionPending) as err:
            raise SelftestError(f"the submission was not accepted: {err}") from None
        return submission.submission_id, job_id

    def submission(self, submission_id: str) -> dict[str, Any]:
        from ..intake.table import submission_item
        from ..local.embedded import INTAKE_TABLE

        return submission_item(self.cloud.client("dynamodb"), INTAKE_TABLE, submission_id)

    def _listed(self, job_id: str) -> SlurmJob:
        from ..slurm.local import DockerError, listed_job
        from ..slurm.squeue import SqueueError

        try:
            return listed_job(self.cloud.local, job_id)
        except (DockerError, SqueueError) as err:
            raise SelftestError(f"Slurm did not answer for job {job_id}: {err}") from None

    def _run_root(self, submission_id: str, job_id: str) -> Path | None:
        from ..jobs.job_dir import Owner
        from ..jobs.job_dir import find as find_job_dir

        owner = Owner(cluster=self.cluster, slurm_job_id=job_id, submission_id=submission_id)
        claimed = find_job_dir(self.project, owner)
        return claimed.directory / "run" if claimed else None

    def job(self, submission_id: str, job_id: str) -> JobView:
        from ..relion.progress import progress_path

        listed = self._listed(job_id)
        state = listed.shown_state
        run_root = self._run_root(submission_id, job_id)
        progress: dict[str, Any] = {}
        if run_root is not None:
            try:
                progress = json.loads(progress_path(run_root).read_text())
            except (OSError, ValueError):
                progress = {}
        machine = self.cloud.reconciler.machines.get(listed.node_list)
        return JobView(
            state=state,
            iterations_done=int(progress.get("current_iteration", 0) or 0),
            iterations_requested=int(progress.get("requested_iterations", 0) or 0),
            resumed_from=tuple(int(i) for i in progress.get("resumed_from", [])),
            instance_id=machine.instance_id if machine and state == "RUNNING" else "",
        )

    def job_output(self, submission_id: str, job_id: str) -> str:
        try:
            return (self.project / f"class3d-{job_id}.out").read_text(errors="replace")
        except OSError:
            return ""

    def interrupt(self, instance_id: str) -> str:
        """Where the deployed stack starts its FIS experiment: the notice FIS would send."""
        self.cloud.reconciler.reclaim(instance_id, grace_seconds=NOTICE_SECONDS)
        return f"local-notice:{instance_id}"

    def end_interrupt(self, handle: str) -> None:
        return None  # one notice, already delivered; the reconciler ends the instance itself

    def cancel(self, submission_id: str, job_id: str) -> None:
        from ..slurm.local import DockerError

        try:
            self.cloud.local.run("scancel", job_id)
        except (subprocess.SubprocessError, DockerError) as err:
            raise SelftestError(f"scancel {job_id} failed: {err}") from None

    def cost(self, job_id: str, final_state: str) -> tuple[float, float] | None:
        from ..demo.runner import DemoResult, _price

        priced = DemoResult()
        try:
            _price(self.cloud, job_id, final_state, priced)
        except TimeoutError:
            return None
        if priced.cost_usd is None:
            return None
        return priced.cost_usd, priced.reclaimed_usd or 0.0


@contextmanager
def embedded_backend(
    work_dir: Path = DEFAULT_WORK_DIR, *, prefix: str | None = None
) -> Iterator[EmbeddedBackend]:
    """The embedded cloud up for the selftest; everything stopped and removed on exit. Its
    containers are named by this process, so two runs on one machine never share a cluster."""
    prefix = prefix or f"{PREFIX}-{os.getpid()}"
    from ..demo.runner import DemoError, ensure_images
    from ..local.embedded import EmbeddedCloud
    from ..settings import Settings

    try:
        # As the demo does: engine up, images current, the RELION image exported into the
        # nodes' /containers cache (without it the job user cannot make the SIF).
        ensure_images()
    except DemoError as err:
        raise SelftestError(str(err)) from None
    with EmbeddedCloud.start(
        prefix=prefix,
        settings=Settings(gpus=(1,)),
        gpu_count=1,
        work_dir=work_dir,
        suspend_time=SUSPEND_SECONDS,
    ) as cloud:
        yield EmbeddedBackend(cloud=cloud, data_dir=work_dir / "data", work_dir=work_dir)
