"""The spot watcher against a real IMDSv2 server on 127.0.0.1, Slurm commands recorded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from relion_spot.node import spot_watcher
from relion_spot.node.imds import Imds, ImdsError
from relion_spot.powersave.slurm import CommandResult

from ..powersave.conftest import Recorder
from .conftest import FakeImds

NOTICE = {"action": "terminate", "time": "2026-11-24T00:12:00Z"}


def notice_after(imds: FakeImds, polls: int, *, revoke_at: int | None = None):
    """A sleep that lets ``polls`` polls see 404 before EC2 issues the notice."""

    def sleep(seconds: float) -> None:
        if revoke_at is not None and imds.polls() == revoke_at:
            imds.revoke_tokens()
        if imds.polls() >= polls:
            imds.notice = NOTICE
        time.sleep(min(seconds, 0.01))

    return sleep


def watcher_env(imds: FakeImds, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "AWS_DEFAULT_REGION": "us-east-1",
        "RELION_SPOT_IMDS_URL": imds.url,
        "RELION_SPOT_SPOT_POLL_SECONDS": "5",
        "RELION_SPOT_SPOT_EVENTS_FILE": str(tmp_path / "events" / "spot.jsonl"),
        "RELION_SPOT_SPOT_WATCHER_LOG": str(tmp_path / "watcher.log"),
        **extra,
    }


def test_notice_drains_the_node_requeues_its_jobs_and_records_the_event(
    imds: FakeImds, tmp_path: Path
) -> None:
    recorder = Recorder()
    recorder.replies[("squeue", "--noheader", "--jobs=41,42_3")] = CommandResult(
        0, "41|BeginTime\n42_3|BeginTime\n"
    )
    recorder.replies[("squeue",)] = CommandResult(0, "41\n42_3\n")

    status = spot_watcher.main(
        [], environ=watcher_env(imds, tmp_path), runner=recorder, sleep=notice_after(imds, 3)
    )

    assert status == 0
    assert recorder.calls == [
        ["scontrol", "update", "nodename=gpu-3", "state=drain", "reason=spot reclaim"],
        [
            "squeue",
            "--noheader",
            "--nodelist=gpu-3",
            "--states=RUNNING,CONFIGURING,SUSPENDED",
            "--format=%i",
        ],
        ["scontrol", "requeue", "41,42_3"],
        ["scontrol", "update", "nodename=gpu-3", "state=power_down_asap", "reason=spot reclaim"],
        ["squeue", "--noheader", "--jobs=41,42_3", "--format=%i|%r"],
        ["scontrol", "update", "jobid=41,42_3", "starttime=now"],
    ]
    assert imds.polls() == 4, "three 404s, then the notice"
    assert imds.tokens_issued == 1, "one token serves every poll"
    assert all(status != 401 for _, _, status in imds.requests)

    (line,) = (tmp_path / "events" / "spot.jsonl").read_text().splitlines()
    event = json.loads(line)
    assert event["kind"] == "spot-interruption"
    assert (event["cluster"], event["node"]) == ("lab-1gpu", "gpu-3")
    assert (event["instance_id"], event["instance_type"]) == ("i-0abc123def4567890", "g5.xlarge")
    assert event["availability_zone"] == "us-east-1b"
    assert (event["action"], event["action_time"]) == ("terminate", "2026-11-24T00:12:00Z")
    assert event["job_ids"] == ["41", "42_3"]
    assert event["requeued"] is True and event["drained"] is True
    assert 0 <= event["handled_at"] - event["noticed_at"] < 120
    log = (tmp_path / "watcher.log").read_text()
    assert "spot interruption notice: terminate at 2026-11-24T00:12:00Z; draining gpu-3" in log
    assert "gpu-3: requeued job(s) 41,42_3" in log


def test_the_event_is_recorded_before_waiting_on_slurms_requeue_hold(
    imds: FakeImds, tmp_path: Path
) -> None:
    """Lifting the hold may take RELEASE_ATTEMPTS seconds; the instance may be gone by then, so the
    reclaim's record must already be written when that wait starts."""
    events = tmp_path / "events" / "spot.jsonl"
    recorder = Recorder()
    recorder.replies[("squeue",)] = CommandResult(0, "41\n")
    seen_at_release: list[bool] = []

    def runner(argv: list[str]) -> CommandResult:
        if "--format=%i|%r" in argv:
            seen_at_release.append(events.is_file() and events.read_text().strip() != "")
        return recorder(argv)

    status = spot_watcher.main(
        [], environ=watcher_env(imds, tmp_path), runner=runner, sleep=notice_after(imds, 1)
    )

    assert status == 0
    assert seen_at_release, "the watcher never looked for the requeue hold"
    assert all(seen_at_release), "the hold was awaited before the event was recorded"


def test_event_goes_to_the_table_once(imds: FakeImds, tmp_path: Path, moto_aws: None) -> None:
    import boto3

    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    dynamodb.create_table(
        TableName="spot-events",
        KeySchema=[{"AttributeName": "instance_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "instance_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    env = watcher_env(imds, tmp_path, RELION_SPOT_SPOT_EVENTS_TABLE="spot-events")

    for _ in range(2):
        imds.notice = None
        status = spot_watcher.main([], environ=env, runner=Recorder(), sleep=notice_after(imds, 1))
        assert status == 0

    items = dynamodb.scan(TableName="spot-events")["Items"]
    assert len(items) == 1
    assert items[0]["node"] == {"S": "gpu-3"}
    assert items[0]["instance_id"] == {"S": "i-0abc123def4567890"}
    assert "already in table spot-events" in (tmp_path / "watcher.log").read_text()


def test_an_expired_token_is_renewed(imds: FakeImds, tmp_path: Path) -> None:
    status = spot_watcher.main(
        [],
        environ=watcher_env(imds, tmp_path),
        runner=Recorder(),
        sleep=notice_after(imds, 4, revoke_at=2),
    )
    assert status == 0
    assert imds.tokens_issued == 2
    assert [s for _, _, s in imds.requests].count(401) == 1


def test_node_name_from_the_environment_wins(imds: FakeImds, tmp_path: Path) -> None:
    recorder = Recorder()
    env = watcher_env(imds, tmp_path, RELION_SPOT_NODE_NAME="cpu-1")
    assert spot_watcher.main([], environ=env, runner=recorder, sleep=notice_after(imds, 1)) == 0
    assert recorder.calls[0][2] == "nodename=cpu-1"


def test_slurm_refusing_the_requeue_is_an_error_exit(imds: FakeImds, tmp_path: Path) -> None:
    recorder = Recorder()
    recorder.replies[("squeue",)] = CommandResult(0, "7\n")
    recorder.replies[("scontrol", "requeue")] = CommandResult(1, "", "Job is not requeueable")
    env = watcher_env(imds, tmp_path)
    assert spot_watcher.main([], environ=env, runner=recorder, sleep=notice_after(imds, 1)) == 1
    assert "could NOT requeue job(s) 7" in (tmp_path / "watcher.log").read_text()
    assert recorder.calls[-1][3] == "state=power_down_asap"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RELION_SPOT_SPOT_POLL_SECONDS": "0"}, "RELION_SPOT_SPOT_POLL_SECONDS = '0'"),
        ({"RELION_SPOT_SPOT_POLL_SECONDS": "soon"}, "expected seconds above 0 and at most 30"),
        ({"RELION_SPOT_IMDS_URL": "169.254.169.254"}, "expected an http:// base URL"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    imds: FakeImds, tmp_path: Path, capsys, change: dict[str, str], message: str
) -> None:
    recorder = Recorder()
    env = watcher_env(imds, tmp_path, **change)
    assert spot_watcher.main([], environ=env, runner=recorder) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("relion-spot")
    assert recorder.calls == [] and imds.requests == []


def test_imds_client_needs_the_token_and_reports_a_dead_endpoint(imds: FakeImds) -> None:
    client = Imds(imds.url)
    assert client.get("instance-type") == "g5.xlarge"
    assert client.get("spot/instance-action") is None
    imds.revoke_tokens()
    assert client.get("instance-id") == "i-0abc123def4567890"
    with pytest.raises(ImdsError, match="no answer"):
        Imds("http://127.0.0.1:9", timeout=0.5).get("instance-id")


def test_the_requeue_delay_is_lifted_once_slurm_has_set_it() -> None:
    from relion_spot.powersave.slurm import Slurm

    answers = iter(["7|None\n", "7|None\n", "7|BeginTime\n"])
    recorder = Recorder()
    calls: list[list[str]] = []

    def runner(argv):  # squeue answers change as Slurm finishes the requeue
        calls.append(list(argv))
        if argv[0] == "squeue":
            return CommandResult(0, next(answers))
        return recorder(argv)

    slept: list[float] = []
    assert spot_watcher.release_requeue_delay(Slurm(runner=runner), "gpu-1", ["7"], slept.append)
    assert len(slept) == 2
    assert calls[-1] == ["scontrol", "update", "jobid=7", "starttime=now"]

    never = Slurm(runner=lambda argv: CommandResult(0, "7|Resources\n"))
    assert not spot_watcher.release_requeue_delay(never, "gpu-1", ["7"], lambda _: None)
