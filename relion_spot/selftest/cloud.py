"""The selftest's AWS calls on a deployed cluster stack, with the caller's credentials: the
stack's outputs, the controller's recorded permission checks, the G/VT spot quota, the
cluster's instances by tag, the intake queue and table (submit, progress, cancel), the cost
table, and the stack's AWS FIS experiment template (start, watch, stop)."""

from __future__ import annotations

import getpass
import uuid
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .. import tags
from ..catalog import INSTANCE_TYPES
from ..client.cluster import ClusterHandle
from ..cost.store import decode_cost, deserialize, job_key
from ..doctor.checks import G_VT_SPOT_QUOTA
from ..intake.client import SubmissionPending, SubmissionRejected, submit, wait_for_acceptance
from ..intake.message import new_cancel
from ..intake.table import IntakeTable, submission_item
from ..slurm.spec import GPU_PARTITION
from ..teardown.sweep import LIVE_STATES
from . import record
from .flow import Instance, JobView, SelftestError
from .node_check import NODE_CHECKER
from .record import StoredChecks

TEMPLATE_OUTPUT = "SpotInterruptionTemplateId"
GPU_TYPES_OUTPUT = "GpuInstanceTypes"
FIS_ENDED = ("completed", "stopped", "failed", "cancelled")
ACCEPT_SECONDS = 300
"""A sleeping controller wakes in a minute or two (a cold Fargate start)."""


class AwsBackend:
    """``flow.Backend`` over a deployed cluster stack."""

    gpu_expected = True
    data_seconds = 3 * 3600.0
    """A new cluster's first GPU-image build (four CUDA architectures, on a CPU node) comes
    before the data set's job."""
    interrupt_notice_seconds = 120.0
    scale_to_zero_seconds = 3600.0
    cost_record_seconds = 1800.0
    """The cost function prices on its schedule; a record can take a while."""

    def __init__(self, handle: ClusterHandle, session: Any, outputs: dict[str, str]) -> None:
        self.handle = handle
        self.session = session
        self.outputs = outputs
        self.cluster = handle.cluster_name
        self.image = outputs.get("RelionImage", "the cluster's RELION image")

    def client(self, name: str) -> Any:
        return self.session.client(name)

    def permission_checks(self) -> StoredChecks | None:
        return record.load(self.client("dynamodb"), self.handle.intake_table)

    def node_checks(self, instance_id: str) -> StoredChecks | None:
        checker = NODE_CHECKER.format(instance_id=instance_id)
        return record.load(self.client("dynamodb"), self.handle.intake_table, checker)

    def gpu_types(self) -> tuple[str, ...]:
        return tuple(t for t in self.outputs.get(GPU_TYPES_OUTPUT, "").split(",") if t)

    def gpu_vcpus_needed(self) -> int:
        return max((INSTANCE_TYPES[t].vcpus for t in self.gpu_types() if t in INSTANCE_TYPES),
                   default=0)  # fmt: skip

    def spot_quota_vcpus(self) -> float | None:
        """The G/VT spot vCPU quota; None when the caller may not read it."""
        quotas = self.client("service-quotas")
        service, code = G_VT_SPOT_QUOTA
        try:
            try:
                answer = quotas.get_service_quota(ServiceCode=service, QuotaCode=code)
            except quotas.exceptions.NoSuchResourceException:
                answer = quotas.get_aws_default_service_quota(ServiceCode=service, QuotaCode=code)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("AccessDeniedException",):
                return None
            raise
        value = answer.get("Quota", {}).get("Value")
        return None if value is None else float(value)

    def live_instances(self) -> list[Instance]:
        return [Instance(i["InstanceId"], i.get("InstanceType", ""), _tag(i, tags.NODE))
                for i in self._instances([])]  # fmt: skip

    def _instances(self, extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
        filters = [
            {"Name": f"tag:{tags.CLUSTER}", "Values": [self.cluster]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
            *extra,
        ]
        pages = self.client("ec2").get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def submit(self, parameters: dict[str, Any], template: str) -> tuple[str, str]:
        table = IntakeTable(self.client("dynamodb"), self.handle.intake_table)
        submission = submit(
            self.client("sqs"),
            table,
            self.handle.queue_url,
            parameters=parameters,
            user=f"selftest:{getpass.getuser()}",
            template=template,
        )
        if self.handle.ecs_cluster and self.handle.controller_service:
            from ..controller_wake.wake import wake_controller

            wake_controller(
                self.client("ecs"), self.handle.ecs_cluster, self.handle.controller_service
            )
        try:
            job_id = wait_for_acceptance(table, submission.submission_id, ACCEPT_SECONDS)
        except (SubmissionRejected, SubmissionPending) as err:
            raise SelftestError(f"the submission was not accepted: {err}") from None
        return submission.submission_id, job_id

    def submission(self, submission_id: str) -> dict[str, Any]:
        return submission_item(self.client("dynamodb"), self.handle.intake_table, submission_id)

    def job(self, submission_id: str, job_id: str) -> JobView:
        item = self.submission(submission_id)
        progress = item.get("progress") or {}
        done = int(progress.get("current_iteration") or 0)
        requested = int(progress.get("requested_iterations") or 0)
        word = str(progress.get("state", ""))
        on = self._instances([{"Name": f"tag:{tags.JOB_ID}", "Values": [job_id]}])
        if item.get("cancel_state") == "cancelled":
            state = "CANCELLED"
        elif word == "FINISHED" and requested and done >= requested:
            state = "COMPLETED"
        elif word == "RUNNING" and on:
            state = "RUNNING"
        else:
            state = "PENDING"  # queued, booting, or requeued after a reclaim (STOPPED)
        return JobView(
            state=state,
            iterations_done=done,
            iterations_requested=requested,
            resumed_from=tuple(int(i) for i in progress.get("resumed_from") or []),
            instance_id=on[0]["InstanceId"] if on and state == "RUNNING" else "",
        )

    def job_output(self, submission_id: str, job_id: str) -> str:
        return str(self.submission(submission_id).get("log_tail", ""))

    def interrupt(self, instance_id: str) -> str:
        template = self.outputs.get(TEMPLATE_OUTPUT, "")
        if not template:
            raise SelftestError(f"stack {self.handle.stack} has no output {TEMPLATE_OUTPUT}")
        # FIS picks any running GPU spot node of this cluster: only the selftest's may run.
        others = sorted(
            i["InstanceId"]
            for i in self._instances([{"Name": f"tag:{tags.PARTITION}", "Values": [GPU_PARTITION]}])
            if i["InstanceId"] != instance_id
        )
        if others:
            raise SelftestError(
                f"not interrupting: {len(others)} other GPU node(s) of {self.cluster} run "
                f"({', '.join(others)}), and the drill could pick one and stop its work; run "
                "selftest --interrupt while only the selftest's job runs"
            )
        started = self.client("fis").start_experiment(
            clientToken=str(uuid.uuid4()),
            experimentTemplateId=template,
            tags={tags.CLUSTER: self.cluster},
        )
        return str(started["experiment"]["id"])

    def end_interrupt(self, handle: str) -> None:
        fis = self.client("fis")
        try:
            state = fis.get_experiment(id=handle)["experiment"]["state"]["status"]
            if state not in FIS_ENDED:
                fis.stop_experiment(id=handle)
        except (ClientError, BotoCoreError) as err:
            raise SelftestError(f"could not stop FIS experiment {handle}: {err}") from None

    def cancel(self, submission_id: str, job_id: str) -> None:
        request = new_cancel(submission_id, job_id, user=f"selftest:{getpass.getuser()}")
        self.client("sqs").send_message(
            QueueUrl=self.handle.queue_url, MessageBody=request.to_json()
        )

    def cost(self, job_id: str, final_state: str) -> tuple[float, float] | None:
        item = (
            self.client("dynamodb")
            .get_item(
                TableName=self.handle.costs_table, Key={"job": {"S": job_key(self.cluster, job_id)}}
            )
            .get("Item")
        )
        if not item:
            return None
        cost = decode_cost(deserialize(item))
        if final_state not in [a.get("state") for a in cost.get("attempts", [])]:
            return None
        return float(cost["estimate_usd"]), float(cost["reclaimed_usd"])


def _tag(instance: dict[str, Any], key: str) -> str:
    return next((t["Value"] for t in instance.get("Tags") or [] if t["Key"] == key), "")


def stack_outputs(session: Any, stack: str) -> dict[str, str]:
    found = session.client("cloudformation").describe_stacks(StackName=stack)["Stacks"]
    return {o["OutputKey"]: o.get("OutputValue", "") for o in found[0].get("Outputs") or []}
