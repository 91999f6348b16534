"""The forecast's arithmetic: what running jobs and a launch add to the month's spend."""

from __future__ import annotations

import pytest

from relion_spot.budget.forecast import (
    Forecast,
    UnpricedGroupError,
    horizon_usd,
    node_hour_usd,
    running_usd,
)
from relion_spot.catalog import INSTANCE_TYPES
from relion_spot.powersave.config import NodeGroup
from relion_spot.slurm.squeue import SlurmJob

GPU = NodeGroup("gpu", "lt-0123", ("g5.xlarge", "g6.xlarge"), 4, 1)
GROUPS = {"gpu": GPU}
NOW = 1_790_000_000


def _job(job_id: str, state: str, nodes: tuple[str, ...], started: int) -> SlurmJob:
    return SlurmJob(job_id, frozenset({state}), "gpu", len(nodes) or 1, nodes, started)


def test_a_node_hour_is_the_dearest_type_of_its_group_on_demand() -> None:
    dearest = max(INSTANCE_TYPES[t].on_demand_usd_hour for t in GPU.instance_types)
    assert node_hour_usd(GPU) == dearest
    assert horizon_usd(GPU, 2) == round(2 * dearest, 6)


def test_running_jobs_count_their_time_so_far_and_an_hour_more() -> None:
    hour = node_hour_usd(GPU)
    jobs = [
        _job("1", "RUNNING", ("gpu-1",), NOW - 1800),
        _job("2", "PENDING", (), 0),
        _job("3", "CONFIGURING", ("gpu-2",), NOW),
    ]
    assert running_usd(jobs, GROUPS, now=NOW) == round(hour * 1.5 + hour * 1.0, 6)
    # The job on the node being asked for is priced as the launch, not twice.
    assert running_usd(jobs, GROUPS, now=NOW, excluded_nodes=["gpu-2"]) == round(hour * 1.5, 6)


def test_the_cap_is_passed_only_by_more_than_it() -> None:
    assert not Forecast(10.0, 6.0, 3.0, 1.0).would_pass
    assert Forecast(10.0, 6.0, 3.0, 1.01).would_pass
    assert Forecast(10.0, 6.0, 3.0, 1.01).left_usd == 1.0
    assert not Forecast(None, 1e9, 0.0, 1.0).would_pass


def test_a_type_without_a_price_cannot_be_kept_under_a_cap() -> None:
    odd = NodeGroup("gpu", "lt-0123", ("g5.xlarge", "x9.huge"), 1, 1)
    with pytest.raises(UnpricedGroupError, match=r"x9\.huge"):
        node_hour_usd(odd)
