"""The selftest's verdicts from what it saw: the job output's own lines, the interruption and
resume, the cost record and the return to zero nodes."""

from __future__ import annotations

from dataclasses import replace

from relion_spot.selftest.verdicts import (
    CAPABILITIES,
    FAILED,
    NOT_TESTED,
    PASSED,
    Observations,
    judge,
    parse_job_output,
)

SIF = "/containers/relion-5.0.1-cuda.sif"
LAUNCH = f"apptainer exec --nv --bind /data,/scratch {SIF}"
GPU_OUTPUT = "\n".join(
    [
        "class3d: attempt 0 of job 7 on gpu-1 in /data/p/Class3D/job001",
        "checkpoint: starting fresh (resumed 0 times)",
        f"checkpoint: RELION 5.0.1 via {LAUNCH}",
        f"checkpoint: {LAUNCH} relion_refine --i particles.star --o Class3D/job001/run --gpu --j 4",
        "class3d: attempt 1 of job 7 on gpu-2 in /data/p/Class3D/job001",
        "checkpoint: resuming after iteration 2 (resumed 1 times)",
        f"checkpoint: RELION 5.0.1 via {LAUNCH}",
        f"checkpoint: {LAUNCH} relion_refine --continue Class3D/job001/run_it002_optimiser.star"
        " --gpu --j 4",
    ]
)


def _seen(**changes: object) -> Observations:
    seen = Observations(
        gpu_expected=True,
        image="relion-spot/relion:5.0.1-cuda12",
        interrupt_requested=True,
        instances_launched=["i-1"],
        job_running=True,
        job_state="COMPLETED",
        iterations_done=4,
        iterations_requested=4,
        interrupted_instance="i-1",
        interrupted_after_iteration=2,
        interrupted_instance_gone=True,
        resumed_from=[2],
        resumed_on="i-2",
        runtime=parse_job_output(GPU_OUTPUT),
        accuracy=0.95,
        cost_usd=0.31,
        reclaimed_usd=0.12,
        scaled_to_zero=True,
    )
    return replace(seen, **changes)  # type: ignore[arg-type]


def test_the_last_attempts_runtime_is_read_from_the_jobs_output() -> None:
    runtime = parse_job_output(GPU_OUTPUT)
    assert runtime.relion_version == "5.0.1"
    assert runtime.launcher.startswith("apptainer exec --nv ")
    assert "--continue" in runtime.argv and runtime.argv.endswith("--gpu --j 4")


def test_a_full_run_passes_every_capability() -> None:
    verdicts = judge(_seen())
    assert [v.capability for v in verdicts] == list(CAPABILITIES)
    assert {v.result for v in verdicts} == {PASSED}
    by_name = {v.capability: v for v in verdicts}
    assert by_name["resume"].detail == "resumed at iteration 3 on i-2 and completed"
    assert "$0.1200 of it the interrupted attempt" in by_name["cost record"].detail


def test_each_broken_promise_fails_its_own_verdict() -> None:
    cases = {
        "launch": {"instances_launched": []},
        "bootstrap": {"job_running": False},
        "GPU": {"runtime": parse_job_output(GPU_OUTPUT.replace("--nv ", "").replace("--gpu", ""))},
        "image": {"runtime": parse_job_output(GPU_OUTPUT.replace(".sif", ".img"))},
        "RELION": {"accuracy": 0.6},
        "RELION ": {"accuracy": None},  # the job did not score its own ground-truthed set
        "reclaim": {"interrupted_instance_gone": False},
        "resume": {"resumed_from": [1]},
        "cost record": {"cost_usd": None},
        "scale to zero": {"scaled_to_zero": False, "live_instances_at_end": ["i-2"]},
    }
    for capability, changes in cases.items():
        failed = [v.capability for v in judge(_seen(**changes)) if v.result == FAILED]
        assert capability.strip() in failed, (capability, failed)


def test_the_nodes_own_permission_check_decides_the_bootstrap_verdict() -> None:
    from relion_spot.selftest.permissions import CheckOutcome

    def outcome(result: str) -> CheckOutcome:
        code = "" if result == "allowed" else "UnauthorizedOperation"
        return CheckOutcome("prolog", "ec2:CreateTags", "this node", result, code, "no policy")

    by_name = {v.capability: v for v in judge(_seen(node_checks=[outcome("allowed")] * 4))}
    assert by_name["bootstrap"].result == PASSED
    assert by_name["bootstrap"].detail.endswith("may make its 4 EC2 calls")
    denied = {v.capability: v for v in judge(_seen(node_checks=[outcome("denied")]))}
    assert denied["bootstrap"].result == FAILED
    assert "the node role may not: ec2:CreateTags (prolog): UnauthorizedOperation" in (
        denied["bootstrap"].detail
    )
    silent = {v.capability: v for v in judge(_seen(node_checks=[]))}
    assert silent["bootstrap"].detail == "the node ran the job but recorded no permission check"


def test_without_gpu_or_interrupt_those_are_not_tested_not_passed() -> None:
    local = _seen(
        gpu_expected=False,
        interrupt_requested=False,
        runtime=parse_job_output(GPU_OUTPUT.replace("--nv ", "").replace(" --gpu", "")),
    )
    by_name = {v.capability: v for v in judge(local)}
    assert by_name["GPU"].result == NOT_TESTED
    assert (by_name["reclaim"].result, by_name["resume"].result) == (NOT_TESTED, NOT_TESTED)
    assert by_name["image"].result == PASSED
