"""The staging job's S3 reads, authorized against the synthesized node role policies.

``stage_buckets`` names the buckets the nodes may read (alternate synth: lab-b-raw and
lab-b.archive). The staging job (relion_spot.staging.transfer) calls HeadObject and a ranged
GetObject, both authorized as ``s3:GetObject`` on the object; ListBucket on the bucket makes a
missing key a 404. Only the CPU partition stages; nothing may write.
"""

from __future__ import annotations

from typing import Any

import pytest

from .resolver import PARTITION, TemplateResolver
from .simulator import Decision, Request, simulate

STACK = "lab-b-gpu4"
GRANTED = ("lab-b-raw", "lab-b.archive")


def _object(bucket: str) -> str:
    return f"arn:{PARTITION}:s3:::{bucket}/relion_benchmark.tar.gz"


def _bucket(bucket: str) -> str:
    return f"arn:{PARTITION}:s3:::{bucket}"


CASES: dict[str, tuple[bool, Request]] = {
    **{
        f"cpu-node/s3:GetObject/{b}": (True, Request("cpu-node", "s3:GetObject", _object(b)))
        for b in GRANTED
    },
    **{
        f"cpu-node/s3:ListBucket/{b}": (True, Request("cpu-node", "s3:ListBucket", _bucket(b)))
        for b in GRANTED
    },
    "cpu-node/deny/s3:GetObject/another-bucket": (
        False,
        Request("cpu-node", "s3:GetObject", _object("someone-elses")),
    ),
    "cpu-node/deny/s3:ListBucket/another-bucket": (
        False,
        Request("cpu-node", "s3:ListBucket", _bucket("someone-elses")),
    ),
    "cpu-node/deny/s3:PutObject/granted-bucket": (
        False,
        Request("cpu-node", "s3:PutObject", _object("lab-b-raw")),
    ),
    "cpu-node/deny/s3:DeleteObject/granted-bucket": (
        False,
        Request("cpu-node", "s3:DeleteObject", _object("lab-b-raw")),
    ),
    "gpu-node/deny/s3:GetObject/granted-bucket": (
        False,
        Request("gpu-node", "s3:GetObject", _object("lab-b-raw")),
    ),
}


@pytest.fixture(scope="module")
def decisions(alternate_synth: Any) -> dict[str, Decision]:
    templates = {n: alternate_synth.template(n) for n in alternate_synth.template_names()}
    region = alternate_synth.stacks[STACK].region
    roles = TemplateResolver(templates, STACK, region).role_policies()

    def role(prefix: str) -> Any:
        (found,) = [r for logical_id, r in roles.items() if logical_id.startswith(prefix)]
        return found

    principals = {"cpu-node": role("CpuNodesRole"), "gpu-node": role("GpuNodesRole")}
    return simulate(principals, {case_id: request for case_id, (_, request) in CASES.items()})


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_stage_bucket_reads(case_id: str, decisions: dict[str, Decision]) -> None:
    allowed, _ = CASES[case_id]
    decision = decisions[case_id]
    assert decision.decision != "Error", decision.errors
    assert decision.ignored == []
    assert decision.allowed == allowed, f"{case_id}: got {decision.decision}"
