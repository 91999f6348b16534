"""What a submitter or a job writes reaches another member's terminal only as plain characters:
escape sequences and control characters from a log tail, a rejection reason, a user name or a
parameter are stripped by the CLI (relion_spot.client.terminal), and rich markup in them is
shown, not obeyed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from relion_spot.cli import main
from relion_spot.client.terminal import printable
from relion_spot.intake.message import new_submission
from relion_spot.intake.report import ProgressReporter

from .conftest import STACK, TABLE, Cluster, node_reports
from .test_commands import _accepted, _record, _status_json, _submit

CLEAR_SCREEN = "\x1b[2J\x1b[H"
ERASE_LINE_ABOVE = "\x1b[1A\x1b[2K"
TITLE = "\x1b]0;pwned\x07"
HYPERLINK = "\x1b]8;;https://evil.example/\x1b\\click here\x1b]8;;\x1b\\"
C1_CSI = "\x9b31m"
RIGHT_TO_LEFT = "\u202egnp.exe"
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _assert_plain(text: str) -> None:
    found = sorted({f"U+{ord(c):04X}" for c in _UNPRINTABLE.findall(text)})
    assert not found, f"control characters reached the terminal: {found}"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (f"{CLEAR_SCREEN}all jobs done", "all jobs done"),
        (f"ok{ERASE_LINE_ABOVE}", "ok"),
        (f"{TITLE}name", "name"),
        (HYPERLINK, "click here"),
        (f"{C1_CSI}red", "red"),
        ("fine\rrewritten", "fine rewritten"),
        ("bell\x07 back\x08space del\x7f nul\x00", "bell backspace del nul"),
        (RIGHT_TO_LEFT, "gnp.exe"),
        ("tab\tnew\nline", "tab new line"),
        ("Å 3.5 ✓", "Å 3.5 ✓"),
    ],
)
def test_one_line_text_keeps_only_printable_characters(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_a_log_tail_keeps_its_lines_and_tabs_and_shows_a_rewritten_line_as_lines() -> None:
    tail = f"iter 1\tdone\r\n{CLEAR_SCREEN}iter 2 50%\riter 2 100%\n"
    assert printable(tail, multiline=True) == "iter 1\tdone\niter 2 50%\niter 2 100%\n"


def test_an_ansi_laden_log_tail_is_printed_plain(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    """The job's own output file, reported by the job's real reporter through the node's root
    forwarder, read by ``logs``."""
    job = _accepted(cluster, monkeypatch, capsys)
    (row,) = _status_json(capsys, job)
    (tmp_path / f"class3d-{job}.out").write_text(
        f"iteration 3 of 5\n{CLEAR_SCREEN}{TITLE}Your AWS session expired: run "
        f"{HYPERLINK}\n{ERASE_LINE_ABOVE}{C1_CSI}progress 10%\rprogress 100%\n"
    )
    spool = tmp_path / "spool"
    spool.mkdir()
    env = {
        "RELION_SPOT_SUBMISSION_ID": row["submission_id"],
        "RELION_SPOT_REPORT_SPOOL": str(spool),
        "SLURM_JOB_ID": job,
    }
    reporter = ProgressReporter.from_env(env, cwd=tmp_path)
    assert reporter is not None and reporter.publish(_record(3), state="RUNNING")
    node_reports(spool, job, row["submission_id"]).round()
    stored = cluster.dynamodb.get_item(
        TableName=TABLE, Key={"submission_id": {"S": row["submission_id"]}}
    )["Item"]
    assert CLEAR_SCREEN in stored["log_tail"]["S"]  # stored as the job wrote it
    capsys.readouterr()

    assert main(["logs", "--stack", STACK, job]) == 0
    out = capsys.readouterr().out
    _assert_plain(out)
    assert out.splitlines() == [
        "iteration 3 of 5",
        "Your AWS session expired: run click here",
        "progress 10%",
        "progress 100%",
    ]


def test_a_hostile_rejection_reason_is_printed_plain(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Slurm's answer (here planted by a stand-in) becomes the recorded reason; the submitter
    sees it from ``submit``, every member in ``status``."""
    cluster.slurm.set("refuse", f"{CLEAR_SCREEN}{TITLE}\x9b1A[bold red]job 7 finished[/]\r")
    assert _submit(cluster, monkeypatch) == 1
    err = capsys.readouterr().err
    _assert_plain(err)
    assert err.splitlines()[-1] == (
        "relion-spot submit: rejected: Slurm refused the job: [bold red]job 7 finished[/]"
    )
    assert main(["status", "--stack", STACK]) == 0
    table = capsys.readouterr().out
    _assert_plain(table)
    assert "[bold red]job 7" in table  # shown as written, not taken as rich markup


def test_a_hostile_user_name_from_a_raw_message_is_printed_plain(
    cluster: Cluster, capsys: Any
) -> None:
    """A message sent straight to the queue (no CLI check): the drainer records the rejection
    with the name as sent, and ``status`` shows it without its escapes or its markup."""
    body = json.loads(new_submission({"preset": "benchmark"}, user="x").to_json())
    sid = body["submission_id"]
    body["user"] = f"[link=https://evil.example]{HYPERLINK}mallory[/link]{CLEAR_SCREEN}"
    body["parameters"] = {"K": f"{ERASE_LINE_ABOVE}6\x1b[8m"}
    cluster.sqs.send_message(QueueUrl=cluster.queue_url, MessageBody=json.dumps(body))
    assert cluster.drainer().step() == ["rejected"]
    assert main(["status", "--stack", STACK]) == 0
    table = capsys.readouterr().out
    _assert_plain(table)
    assert "[link=https://evil.example]click" in table and "heremallory[/link]" in table
    assert "rejected: " in table
    (row,) = _status_json(capsys, sid)
    assert CLEAR_SCREEN in row["user"]  # a rejected record keeps the name as it was sent
    assert main(["status", "--stack", STACK, sid]) == 0
    _assert_plain(capsys.readouterr().out)


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_the_cost_report_prints_a_job_name_plain(fmt: str) -> None:
    """Slurm job names and users in the cost table are the submitter's to choose."""
    from io import StringIO

    from relion_spot.cost.report import write

    out = StringIO()
    row = {"job_id": "42", "job_name": f"{TITLE}class3d{CLEAR_SCREEN}[blink]x", "estimate_usd": 0.5}
    write([row], ["job_id", "job_name", "estimate_usd"], fmt, out)
    _assert_plain(out.getvalue())
    assert "class3d[blink]x" in out.getvalue()
