"""The job-time model: it reproduces the figures it is calibrated on and scales as stated."""

from __future__ import annotations

import dataclasses

import pytest

from relion_spot.estimate.idle import load_prices
from relion_spot.estimate.job import JobShape, gpu_speed, predict

BENCHMARK = JobShape(
    particles=105_247, box=360, classes=6, iterations=25, healpix_order=2, offset_range=5,
    offset_step=2,
)  # fmt: skip
PRICES = load_prices()


def test_the_benchmark_on_one_and_four_a10g_is_the_published_run() -> None:
    one = predict(BENCHMARK, "g5.xlarge", PRICES)
    four = predict(BENCHMARK, "g5.12xlarge", PRICES)
    assert one.hours * 60 == pytest.approx(198)
    assert four.hours * 60 == pytest.approx(96, rel=0.01)
    assert one.spot_usd == pytest.approx(1.65, abs=0.01)  # the seed's ~$1.65
    assert (one.low_hours, one.high_hours) == pytest.approx((0.6 * 3.3, 1.6 * 3.3))
    assert one.storage_usd == pytest.approx(105_247 * 360**2 * 4 / 1e9 * 0.03)
    assert one.on_demand_usd == pytest.approx(3.3 * 1.006)


@pytest.mark.parametrize(
    ("change", "factor"),
    [
        ({"particles": 2 * 105_247}, 2.0),
        ({"classes": 3}, 0.5),
        ({"iterations": 50}, 2.0),
        ({"box": 180}, 0.25),
        ({"healpix_order": 3}, 8.0),
        ({"offset_step": 1}, (2 * 5 / 1 + 1) ** 2 / 36),
        ({"offset_range": 0}, 1 / 36),
    ],
)
def test_each_figure_scales_the_time_as_the_model_states(change: dict, factor: float) -> None:
    base = predict(BENCHMARK, "g5.xlarge", PRICES).hours
    assert predict(dataclasses.replace(BENCHMARK, **change), "g5.xlarge", PRICES).hours == (
        pytest.approx(base * factor)
    )


def test_other_gpus_by_their_datasheets_and_unknown_ones_refused() -> None:
    assert gpu_speed("NVIDIA A10G") == 1.0
    assert gpu_speed("NVIDIA L40S") > 2 > 1 > gpu_speed("NVIDIA L4") > gpu_speed("NVIDIA T4")
    base = predict(BENCHMARK, "g5.xlarge", PRICES).hours
    assert predict(BENCHMARK, "g6e.xlarge", PRICES).hours == pytest.approx(
        base / gpu_speed("NVIDIA L40S")
    )
    with pytest.raises(ValueError, match="no datasheet figures for 'NVIDIA H100'"):
        gpu_speed("NVIDIA H100")
