"""The storage-design model for the canonical refinement, against figures worked by hand from
the dated price table (us-east-1, 2026-11-01)."""

from __future__ import annotations

import io
from argparse import Namespace

import pytest

from relion_spot.estimate import cli, storage
from relion_spot.estimate.idle import load_prices

PRICES = load_prices()
ONE_GPU = storage.BENCHMARK[1]


def cost_of(dataset: str, throughput: str, job: storage.Refinement = ONE_GPU, mibps: int = 0):
    return storage.price_design(job, storage.Design(dataset, throughput, mibps), PRICES)


def test_output_per_iteration_is_k_maps_and_a_data_star() -> None:
    # 6 x 360^3 x 4 B = 1,119,744,000 B of maps + 105,247 x 400 B = 42,098,800 B of data.star
    assert ONE_GPU.output_gib_per_iteration == pytest.approx(1_161_842_800 / 2**30)
    assert ONE_GPU.output_gib == pytest.approx(25 * 1_161_842_800 / 2**30)  # 27.05 GiB


def test_elastic_with_the_dataset_on_efs_pays_every_gib_moved() -> None:
    """47 GiB copied at the instance's 1,192 MiB/s (below Elastic's 1,500 per client):
    48,128 / 1,192 = 40.38 s; 27.05 GiB written: 27,700.5 / 1,192 = 23.24 s;
    wall 198 + 1.06 min; reads 47 x 0.03 = $1.41; writes 27.0513 x 0.06 = $1.6231."""
    cost = cost_of("efs", "elastic")
    assert cost.copy_minutes == pytest.approx(48_128 / 1_192 / 60)
    assert cost.wall_minutes == pytest.approx(
        198 + (48_128 + 27.0513 * 1024) / 1_192 / 60, abs=1e-3
    )
    assert cost.read_usd == pytest.approx(1.41)
    assert cost.write_usd == pytest.approx(1.6231, abs=1e-4)
    assert cost.compute_usd == pytest.approx(cost.wall_minutes / 60 * 0.50)
    assert cost.standing_usd_month == 0


def test_bursting_bills_no_io_but_writes_at_100_mibps_on_credits() -> None:
    """Reads are metered at a third: 300 MiB/s, so 48,128 / 300 = 160.4 s; writes at
    100 MiB/s: 277.0 s. 74.05 GiB stored earn 3.616 MiB/s = 305.1 GiB of credits a day; a
    run spends 47 / 3 + 27.05 = 42.72 GiB: 7.14 runs a day at burst speed."""
    cost = cost_of("efs", "bursting")
    assert cost.copy_minutes == pytest.approx(48_128 / 300 / 60, rel=1e-6)
    assert cost.write_minutes == pytest.approx(27.0513 * 1024 / 100 / 60, abs=1e-3)
    assert cost.storage_io_usd == 0
    assert cost.metered_gib == pytest.approx(47 / 3 + 27.0513, abs=1e-3)
    assert cost.refinements_per_day_in_credits == pytest.approx(7.14, abs=0.01)


def test_provisioned_bills_its_rate_above_the_bursting_baseline_every_month() -> None:
    # (100 - 3.616) MiB/s x $6.00 = $578.31 a month, asleep or not
    cost = cost_of("efs", "provisioned", mibps=100)
    assert cost.standing_usd_month == pytest.approx(578.31, abs=0.01)


def test_s3_to_scratch_with_elastic_wins_at_equal_wall_time() -> None:
    """Same wall time as the deployed design (both copy at the instance's network ceiling);
    no EFS reads, 6,016 GETs of 8 MiB = $0.0024; the output writes remain."""
    costs = [storage.price_design(ONE_GPU, d, PRICES) for d in storage.designs(100)]
    chosen = storage.choose(costs)
    assert (chosen.design.dataset, chosen.design.throughput) == ("s3", "elastic")
    deployed = cost_of("efs", "elastic")
    assert chosen.wall_minutes == pytest.approx(deployed.wall_minutes)
    assert chosen.read_usd == pytest.approx(6_016 * 0.0004 / 1000)
    assert chosen.all_in_usd == pytest.approx(deployed.all_in_usd - 1.41 + 0.0024, abs=1e-4)
    slower = [c for c in costs if c.wall_minutes > deployed.wall_minutes + 1e-9]
    assert all(c.all_in_usd < chosen.all_in_usd for c in slower), "cheaper only when slower"


def test_one_reclaim_at_iteration_20_resumed_or_restarted() -> None:
    """Deployed design, 1 GPU, $0.50/h: the fresh node copies again (0.673 min, $1.41) and
    half of iteration 21 is lost (3.96 min): 4.633 min = $0.0386 + $1.41 = $1.4486. From
    zero it also repeats 20 iterations (158.4 min) and their writes (0.31 min, $1.2985):
    163.343 min = $1.3612 + $1.41 + $1.2985 = $4.0697."""
    cost = cost_of("efs", "elastic")
    hourly = cost.compute_usd / (cost.wall_minutes / 60)
    assert hourly == pytest.approx(0.50)
    resumed = storage.reclaim_premium(ONE_GPU, cost, reclaim_after=20, resumes=True)
    restarted = storage.reclaim_premium(ONE_GPU, cost, reclaim_after=20, resumes=False)
    assert resumed == pytest.approx(1.4486, abs=1e-3)
    assert restarted == pytest.approx(4.0697, abs=1e-3)


def test_at_rest_per_month() -> None:
    rest = {r.store: r for r in storage.at_rest(ONE_GPU, PRICES)}
    assert rest["EFS Standard"].usd_month == pytest.approx(47 * 0.30)  # $14.10
    assert rest["EFS Infrequent Access"].usd_month == pytest.approx(47 * 0.016)  # $0.75
    assert rest["EFS Infrequent Access"].usd_per_read == pytest.approx(0.47)
    assert rest["S3 Standard"].usd_month == pytest.approx(47 * 0.023)  # $1.08


def test_staging_once() -> None:
    # EFS Elastic: tarball written, read, extracted: 47 x (0.06 + 0.03 + 0.06) = $7.05
    assert storage.staging_usd(ONE_GPU, "efs", "elastic", PRICES) == pytest.approx(7.05)
    assert storage.staging_usd(ONE_GPU, "efs", "bursting", PRICES) == 0
    assert storage.staging_usd(ONE_GPU, "s3", "elastic", PRICES) == pytest.approx(6_016 * 5e-6)


def test_estimate_prints_the_model_without_a_synth() -> None:
    out = io.StringIO()
    assert cli.run(Namespace(only="storage", cdk_out=None, context=[]), out) == 0
    text = out.getvalue()
    assert "S3->scratch, EFS elastic  <- chosen" in text
    assert "adds $1.45 (resume from iteration 20) vs $4.07 (restart from zero)" in text
    assert "EFS Standard" in text and "14.10" in text
