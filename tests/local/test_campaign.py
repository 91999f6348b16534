"""``relion-spot demo --campaign`` as a lab would run it: the real CLI, the whole embedded cloud,
one ``submit campaign`` through the intake — Class3D, the auto-refine of the class it picks
(reclaimed once, continued from both halves), PostProcess on a CPU node, then ``relion-spot
pull`` of its results through the exchange bucket — judged by the demo's own JSON line, with the
final map measured against the true volume and the pulled files against the project's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relion_spot.demo.campaign import MAX_TRUTH_RESOLUTION_ANGSTROM, CampaignSettings

from .test_demo import _demo


@pytest.mark.docker
def test_a_whole_campaign_refines_the_picked_class_through_a_reclaim_and_prices_each_step(
    slurm_images: None, tmp_path: Path
) -> None:
    done = _demo("--campaign", "--json", "--work-dir", str(tmp_path), timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failures"] == [], result
    steps = {s["step"]: s for s in result["steps"]}
    assert list(steps) == ["class3d", "refine3d", "postprocess"]
    assert all(s["state"] == "COMPLETED" for s in steps.values()), steps
    assert [int(s["job_id"]) for s in steps.values()] == sorted(
        int(s["job_id"]) for s in steps.values()
    )
    assert steps["class3d"]["cost_usd"] > 0 and steps["refine3d"]["cost_usd"] > 0
    assert steps["refine3d"]["reclaimed_usd"] > 0, "the reclaimed attempt is billed as such"
    assert result["reclaims"] == 1
    assert result["reclaimed_at_iteration"] >= CampaignSettings().reclaim_after
    assert result["resumed_from"] == [result["reclaimed_at_iteration"]]
    assert result["picked_class"] in (1, 2) and result["picked_share"] >= 0.25
    assert result["refine_iterations"] > result["reclaimed_at_iteration"]
    nyquist = 8.0
    assert nyquist <= result["resolution_angstrom"] < 30, result
    assert nyquist <= result["truth_resolution_angstrom"] <= MAX_TRUTH_RESOLUTION_ANGSTROM
    assert result["reported"] == {
        "state": "FINISHED",
        "resolution_angstrom": result["resolution_angstrom"],
        "truth_resolution_angstrom": result["truth_resolution_angstrom"],
        "bfactor": result["bfactor"],
    }, "the job's last word reached its record through the node's forwarder"
    assert result["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in steps.values()), abs=1e-6)
    pulled = result["pulled"]
    assert pulled["differ"] == [] and pulled["missing"] == [] and pulled["pictures_png"], pulled
    assert len(pulled["jobs"]) == 3 and pulled["files"] > 10, pulled
    for name in ("postprocess.mrc", "run_half1_class001_unfil.mrc", "fsc.png"):
        assert list((tmp_path / "pulled").rglob(name)), f"relion-spot pull brought no {name}"
    print(
        f"\ncampaign: {result['wall_seconds']:.0f} s, {result['resolution_angstrom']} Å "
        f"gold-standard, {result['truth_resolution_angstrom']} Å against the truth"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--reclaim-after", "9"],
            "--reclaim-after 9: give 0 (no reclaim) to 5 (iterations of the refinement; it "
            "converges after about eight on this set)",
        ),
        (["--iterations", "0"], "--iterations 0: give 1 to 50"),
    ],
)
def test_bad_campaign_settings_are_one_line_and_launch_nothing(
    args: list[str], message: str
) -> None:
    done = _demo("--campaign", *args, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"relion-spot demo: {message}", done.stderr
