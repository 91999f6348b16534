"""Planted links against the root writer of /data (the spot watcher's event log), on the real
file system: a link at the file or at any directory on the way is refused, the link's target is
left as it was, and a plain path is appended to as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relion_spot.node.no_follow import append_line


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """Someone else's file a job would like root to write into."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_text("keep\n")
    return path


def test_a_link_planted_at_the_file_is_not_followed(tmp_path: Path, victim: Path) -> None:
    events = tmp_path / "data" / ".relion-spot" / "events.jsonl"
    events.parent.mkdir(parents=True)
    events.symlink_to(victim)
    with pytest.raises(OSError, match="is a link"):
        append_line(str(events), '{"event": 1}')
    assert victim.read_text() == "keep\n" and events.is_symlink()


def test_a_link_planted_at_a_directory_on_the_way_is_not_followed(
    tmp_path: Path, victim: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ".relion-spot").symlink_to(victim.parent)
    with pytest.raises(OSError, match=r"\.relion-spot in .* is a link or not a directory"):
        append_line(str(data / ".relion-spot" / "victim.txt"), '{"event": 1}')
    assert victim.read_text() == "keep\n"


def test_a_hard_link_to_another_file_is_refused(tmp_path: Path, victim: Path) -> None:
    events = tmp_path / "events.jsonl"
    os.link(victim, events)
    with pytest.raises(OSError, match="not a plain file with one link"):
        append_line(str(events), '{"event": 1}')
    assert victim.read_text() == "keep\n"


def test_a_plain_path_is_made_and_appended_to(tmp_path: Path) -> None:
    events = tmp_path / "data" / ".relion-spot" / "spot-events" / "c.jsonl"
    append_line(str(events), "one")
    append_line(str(events), "two")
    assert events.read_text() == "one\ntwo\n"
