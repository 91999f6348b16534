"""PrologSlurmctld's wait: it returns as soon as no node of the job is booting, gives up (still
exit 0) at the deadline, and reads scontrol's one-line node records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from relion_spot.powersave.slurm import CommandResult
from relion_spot.slurm import wait_for_nodes
from tests.fakes import FakeClock
from tests.slurm.test_idle import nodes_json

BOOTING = nodes_json(
    ("gpu-1", "ALLOCATED+CLOUD+POWERING_UP", ""), ("gpu-2", "IDLE+CLOUD+POWERED_DOWN", "")
)
UP = nodes_json(("gpu-1", "ALLOCATED+CLOUD", ""), ("gpu-2", "MIXED+CLOUD", ""))


def _replies(*texts: str) -> tuple[list[list[str]], object]:
    calls: list[list[str]] = []

    def runner(argv: Sequence[str]) -> CommandResult:
        calls.append(list(argv))
        return CommandResult(0, texts[min(len(calls), len(texts)) - 1])

    return calls, runner


def test_booting_nodes_are_named() -> None:
    assert wait_for_nodes.booting_nodes(BOOTING) == ["gpu-1", "gpu-2"]
    assert wait_for_nodes.booting_nodes(UP) == []


def test_a_reason_with_state_words_does_not_make_a_booting_node_up() -> None:
    reason = "spot reclaim State=IDLE Reason=x"
    answer = nodes_json(("gpu-1", "ALLOCATED+CLOUD+POWERING_UP", reason))
    assert wait_for_nodes.booting_nodes(answer) == ["gpu-1"]


@pytest.mark.parametrize("answer", ["", "{}", nodes_json()])
def test_an_answer_naming_no_node_is_not_up(answer: str) -> None:
    assert wait_for_nodes.booting_nodes(answer) is None


def test_returns_once_the_nodes_registered() -> None:
    clock = FakeClock()
    calls, runner = _replies(BOOTING, BOOTING, UP)
    assert wait_for_nodes.wait(
        "gpu-[1-2]", deadline=60, runner=runner, sleep=clock.sleep, clock=clock
    )
    assert calls == [["scontrol", "--json", "show", "nodes", "gpu-[1-2]"]] * 3
    assert clock.now == 2 * wait_for_nodes.POLL_SECONDS


def test_gives_up_at_the_deadline_and_still_exits_0() -> None:
    clock = FakeClock()
    _, runner = _replies(BOOTING)
    assert not wait_for_nodes.wait(
        "gpu-1", deadline=5, runner=runner, sleep=clock.sleep, clock=clock
    )
    assert clock.now == 5
    assert wait_for_nodes.main({"SLURM_JOB_ID": "7"}, runner=runner) == 0


def test_deadline_is_the_resume_timeout(tmp_path: Path) -> None:
    from relion_spot.settings import Settings
    from relion_spot.slurm.spec import spec_from_settings

    spec_file = tmp_path / "cluster.json"
    spec_file.write_text(spec_from_settings(Settings(gpus=(1,)), 1).to_json())
    assert wait_for_nodes.deadline_seconds(spec_file) == 900
    assert wait_for_nodes.deadline_seconds(tmp_path / "absent.json") == 900
