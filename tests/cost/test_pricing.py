"""Pricing arithmetic on hand-made histories, each figure worked out by hand in the comment."""

from __future__ import annotations

from dataclasses import replace

import pytest

from relion_spot.cost.pricing import (
    Attempt,
    NodeUse,
    PriceHistory,
    StorageIo,
    StorageRates,
    Volume,
    price_attempt,
    price_job,
)


def test_price_steps_are_time_weighted():
    history = PriceHistory([(0, 0.36), (1800, 0.72)])
    # 900 s at 0.36 $/h + 900 s at 0.72 $/h = 0.09 + 0.18
    assert history.dollars(900, 2700) == pytest.approx(0.27)
    # entirely after the last step: 3600 s at 0.72
    assert history.dollars(3600, 7200) == pytest.approx(0.72)
    assert history.dollars(100, 100) == 0.0


def test_history_starting_after_the_attempt_uses_the_earliest_price_until_the_next():
    history = PriceHistory([(2000, 1.0), (1000, 0.5)])
    # [0, 1500): no price before 1000, so 0.5 holds from 0 -> 1500 s at 0.5 $/h
    assert history.dollars(0, 1500) == pytest.approx(1500 * 0.5 / 3600)
    # [0, 3000): 2000 s at 0.5 + 1000 s at 1.0 = (1000 + 1000) / 3600
    assert history.dollars(0, 3000) == pytest.approx(2000 / 3600)


def test_equal_timestamps_keep_the_higher_price():
    history = PriceHistory([(0, 0.2), (0, 0.3)])
    assert history.dollars(0, 3600) == pytest.approx(0.3)


def test_bad_price_points_are_refused():
    with pytest.raises(ValueError, match="bad spot price point"):
        PriceHistory([(0, -1.0)])


def attempt(start: int, end: int, state: str, nodes: tuple[NodeUse, ...], cpus: int) -> Attempt:
    return Attempt(
        cluster="c",
        job_id="7",
        start=start,
        end=end,
        state=state,
        user="bob",
        cpus=cpus,
        node_count=len(nodes),
        nodes=nodes,
    )


G5_A = NodeUse("gpu-1", "i-a", "g5.xlarge", "us-east-1a", 0.0, (Volume(100, "gp3"),))
G5_B = NodeUse("gpu-2", "i-b", "g5.12xlarge", "us-east-1b", 0.0, (Volume(200, "gp2"),))
HISTORIES = {
    ("g5.xlarge", "us-east-1a"): PriceHistory([(0, 0.40), (3600, 0.50)]),
    ("g5.12xlarge", "us-east-1b"): PriceHistory([(0, 2.00)]),
}


def test_attempt_share_and_ebs():
    # g5.12xlarge has 48 vCPUs; 12 held -> share 1/4. 7200 s at 2.00 $/h = 4.00 $ -> 1.00 $.
    # EBS: 200 GB gp2 at 0.10 $/GB-month = 20 $/month; 2 h of 730 h = 0.054794... $ -> /4.
    cost = price_attempt(attempt(0, 7200, "COMPLETED", (G5_B,), cpus=12), HISTORIES)
    assert cost.nodes[0].share == 0.25
    assert cost.compute_usd == pytest.approx(1.0)
    assert cost.ebs_usd == pytest.approx(20 * 2 / 730 / 4)
    assert not cost.reclaimed and cost.flags == ("storage-io-unmetered",)


def test_job_sums_attempts_and_reports_reclaimed_share():
    # Attempt 1 (reclaimed): g5.xlarge whole node, 1800..5400 -> 1800 s at 0.40 + 1800 s at
    # 0.50 = 0.20 + 0.25 = 0.45 $; EBS 100 GB gp3 = 8 $/month for 1 h = 8/730.
    # Attempt 2: g5.12xlarge, 48 of 48 vCPUs, 6000..9600 -> 1 h at 2.00 = 2.00 $; EBS
    # 200 GB gp2 = 20 $/month for 1 h = 20/730.
    first = attempt(1800, 5400, "NODE_FAIL", (G5_A,), cpus=4)
    second = attempt(6000, 9600, "COMPLETED", (G5_B,), cpus=48)
    job = price_job([second, first, second], HISTORIES)
    lost = 0.45 + 8 / 730
    kept = 2.00 + 20 / 730
    assert [a.state for a in job.attempts] == ["NODE_FAIL", "COMPLETED"]
    assert job.total_usd == pytest.approx(lost + kept, abs=1e-9)
    assert job.reclaimed_usd == pytest.approx(lost, abs=1e-9)
    assert job.reclaimed_share == pytest.approx(lost / (lost + kept), abs=1e-9)
    assert job.first_start == 1800 and job.last_end == 9600
    assert job.instance_ids == ("i-a", "i-b")
    assert job.fingerprint() == price_job([first, second], HISTORIES).fingerprint()


def test_missing_price_and_unresolved_node_are_flagged_not_dropped():
    unknown = NodeUse("gpu-9")
    no_price = NodeUse("gpu-3", "i-c", "g6.xlarge", "us-east-1c", 0.0, (Volume(50, "gp3"),))
    job = price_job(
        [attempt(0, 3600, "COMPLETED", (unknown, no_price), cpus=8)],
        HISTORIES,
        vanished_instances={"i-c"},
    )
    assert job.flags == (
        "no-spot-price:g6.xlarge@us-east-1c",
        "priced-from-record:i-c",
        "storage-io-unmetered",
        "unresolved-node:gpu-9",
    )
    # the volume is still charged: 50 GB gp3 = 4 $/month for 1 h, whole node (4 per node of 4)
    assert job.total_usd == pytest.approx(4 / 730, abs=1e-9)


def test_a_job_needs_an_attempt():
    with pytest.raises(ValueError, match="at least one attempt"):
        price_job([], HISTORIES)


def test_storage_io_is_priced_per_gib_and_kept_apart_per_component() -> None:
    """An attempt that read 10 GiB and wrote 4 GiB at $0.03 and $0.06 per GiB:
    10 x 0.03 + 4 x 0.06 = 0.30 + 0.24 = $0.54, on top of compute and EBS."""
    rates = StorageRates(0.03, 0.06)
    lost = replace(
        attempt(0, 3600, "NODE_FAIL", (G5_B,), cpus=4),
        storage_io=StorageIo(10 * 2**30, 4 * 2**30),
    )
    kept = replace(
        attempt(4000, 7600, "COMPLETED", (G5_B,), cpus=4), storage_io=StorageIo(2**30, 0)
    )
    job = price_job([lost, kept], HISTORIES, rates=rates)
    first, second = job.attempts
    assert first.storage_io_usd == pytest.approx(0.54)
    assert second.storage_io_usd == pytest.approx(0.03)
    assert first.total_usd == pytest.approx(first.compute_usd + first.ebs_usd + 0.54)
    parts = job.breakdown()
    assert parts["storage_io"]["usd"] == pytest.approx(0.57)
    assert parts["storage_io"]["reclaimed_usd"] == pytest.approx(0.54)
    assert parts["storage_io"]["reclaimed_share"] == pytest.approx(0.54 / 0.57)
    assert sum(p["usd"] for p in parts.values()) == pytest.approx(job.total_usd)
    assert "storage-io-unmetered" not in job.flags
    assert price_job([lost, kept], HISTORIES).breakdown()["storage_io"]["usd"] == 0.0
