"""Staging the benchmark tarball: from loopback HTTP and from S3 (moto), resumable and verified."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from relion_spot.staging import BENCHMARK_URL, report
from relion_spot.staging.cli import DOWNLOADS, LOCK, MARKER, main

from .conftest import FILES, PER_STACK, STACKS, Served, build_dataset, evil_tarball

NAME = "relion_benchmark.tar.gz"


def fetch(source: str, dest: Path, *extra: str, s3_client: Any = None) -> int:
    argv = ["fetch", "--source", source, "--dest", str(dest), "--retry-wait", "0", *extra]
    return main(argv, s3_client=s3_client)


def assert_staged(dest: Path) -> dict[str, Any]:
    marker = json.loads((dest / MARKER).read_text())
    assert marker["verified"] is True
    assert marker["files"] == FILES
    assert marker["particles"] == PER_STACK * len(STACKS)
    assert marker["particles_star"] == "relion_benchmark/Particles/shiny_2sets.star"
    assert (dest / "relion_benchmark/emd_2660.map").is_file()
    return marker


def test_default_source_is_the_benchmark_tarball() -> None:
    assert BENCHMARK_URL.endswith("/relion_benchmark.tar.gz")


def test_full_fetch_verifies_and_a_second_run_makes_no_request(
    server: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "data"
    sha = hashlib.sha256(server.body).hexdigest()
    assert fetch(server.url, dest, "--sha256", sha, "--expect-files", str(FILES)) == 0
    marker = assert_staged(dest)
    assert marker["bytes"] == len(server.body) and marker["sha256"] == sha
    assert not (dest / DOWNLOADS).exists()  # removed once its contents were verified
    err = capsys.readouterr().err
    assert "sha256 matches" in err and "verified: 4 files, 24 particles in 2 stack(s)" in err
    assert "download relion_benchmark.tar.gz:" in err  # plain progress lines without a tty

    requests = len(server.requests)
    assert fetch(server.url, dest) == 0
    assert len(server.requests) == requests
    assert "already staged, verified" in capsys.readouterr().err

    (dest / marker["particles_star"]).unlink()  # data removed behind the marker's back
    assert fetch(server.url, dest) == 0
    assert "which is gone: staging again" in capsys.readouterr().err
    assert len(server.requests) == requests + 1
    assert_staged(dest)


def test_interrupted_download_resumes_with_a_range_and_sends_nothing_twice(
    server: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "data"
    half = len(server.body) // 2
    server.cut_after = half
    assert fetch(server.url, dest, "--retries", "0", "--keep-archive") == 1
    err = capsys.readouterr().err
    assert "download interrupted" in err and "next run continues" in err
    part = dest / DOWNLOADS / (NAME + ".part")
    assert part.stat().st_size == half
    assert not (dest / MARKER).exists()

    assert fetch(server.url, dest, "--keep-archive") == 0
    assert server.requests[-1] == {"range": f"bytes={half}-", "if_range": server.etag}
    assert server.bytes_sent == len(server.body)  # every byte crossed the wire exactly once
    assert_staged(dest)
    assert (dest / DOWNLOADS / NAME).read_bytes() == server.body


def test_a_staging_job_killed_midway_resumes_where_its_file_ends(
    server: Served, tmp_path: Path
) -> None:
    """What a cancelled or preempted batch job leaves: SIGTERM, no chance to tidy up."""
    server.throttle_s = 0.01
    part = tmp_path / DOWNLOADS / (NAME + ".part")
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relion_spot.staging",
            "fetch",
            "--source",
            server.url,
            "--dest",
            str(tmp_path),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not (part.exists() and part.stat().st_size >= 32 * 1024):
            assert time.monotonic() < deadline and job.poll() is None
            time.sleep(0.01)
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=10)
    finally:
        job.kill()
    held = part.stat().st_size
    assert 0 < held < len(server.body) and not (tmp_path / MARKER).exists()

    server.throttle_s = 0.0
    assert fetch(server.url, tmp_path) == 0
    assert server.requests[-1]["range"] == f"bytes={held}-"
    assert server.sent[-1] == len(server.body) - held
    assert_staged(tmp_path)


def test_a_dropped_connection_is_retried_within_the_same_run(
    server: Served, tmp_path: Path
) -> None:
    server.cut_after = 1000
    assert fetch(server.url, tmp_path, "--retries", "1") == 0
    assert [r["range"] for r in server.requests] == [None, "bytes=1000-"]
    assert server.bytes_sent == len(server.body)
    assert_staged(tmp_path)


def test_complete_download_but_interrupted_unpack_does_not_download_again(
    server: Served, tmp_path: Path
) -> None:
    (tmp_path / DOWNLOADS).mkdir()
    assert fetch(server.url, tmp_path, "--keep-archive", "--expect-files", "99") == 1
    requests = len(server.requests)
    assert not (tmp_path / MARKER).exists()
    assert fetch(server.url, tmp_path, "--expect-files", str(FILES)) == 0
    assert len(server.requests) == requests
    assert_staged(tmp_path)


def test_server_without_ranges_or_a_changed_object_restarts_cleanly(
    server: Served, tmp_path: Path
) -> None:
    part = tmp_path / DOWNLOADS / (NAME + ".part")
    server.cut_after = 500
    assert fetch(server.url, tmp_path, "--retries", "0") == 1
    server.ranges = False
    assert fetch(server.url, tmp_path) == 0
    assert_staged(tmp_path)

    other = tmp_path / "other"
    server.ranges, server.cut_after = True, 700
    assert fetch(server.url, other, "--retries", "0") == 1
    server.set_body(server.body)  # same bytes, new ETag: stand-in for a republished object
    server.etag = '"v2"'
    assert fetch(server.url, other) == 0
    assert server.requests[-1]["if_range"] != server.etag  # If-Range failed -> full body
    assert_staged(other)
    assert not part.exists()


def test_a_complete_part_left_before_its_rename_costs_no_bytes(
    server: Served, tmp_path: Path
) -> None:
    part = tmp_path / DOWNLOADS / (NAME + ".part")
    part.parent.mkdir()
    part.write_bytes(server.body)
    sidecar = {"source": server.url, "total": len(server.body), "validator": server.etag}
    part.with_name(part.name + ".json").write_text(json.dumps(sidecar))
    assert fetch(server.url, tmp_path) == 0
    assert server.requests == [{"range": f"bytes={len(server.body)}-", "if_range": server.etag}]
    assert server.bytes_sent == 0
    assert_staged(tmp_path)


def test_a_second_run_while_the_first_holds_the_directory_stops(
    server: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path.joinpath(LOCK).touch()
    with open(tmp_path / LOCK) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert fetch(server.url, tmp_path) == 1
    assert "another staging run is working" in capsys.readouterr().err
    assert server.requests == []
    assert fetch(server.url, tmp_path) == 0


def test_progress_on_a_terminal_uses_rich(
    server: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[report.RichReporter] = []

    def rich_reporter() -> report.Reporter:
        made.append(report.RichReporter())
        return made[-1]

    monkeypatch.setattr("relion_spot.staging.cli.make_reporter", rich_reporter)
    assert fetch(server.url, tmp_path) == 0
    assert made
    assert_staged(tmp_path)


def test_wrong_sha256_is_a_clear_error_and_the_file_is_not_kept(
    server: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fetch(server.url, tmp_path, "--sha256", "0" * 64) == 1
    err = capsys.readouterr().err
    assert "does not match the expected" in err and err.count("\n") >= 1
    assert not (tmp_path / DOWNLOADS / NAME).exists() and not (tmp_path / MARKER).exists()


def test_truncated_tarball_is_a_clear_error_without_a_marker(
    server: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.set_body(server.body[: len(server.body) * 2 // 3])
    assert fetch(server.url, tmp_path) == 1
    assert "is not a complete, readable tar archive" in capsys.readouterr().err
    assert not (tmp_path / MARKER).exists()
    assert not (tmp_path / DOWNLOADS / NAME).exists()  # the next run downloads it afresh


def test_unreadable_star_is_a_clear_error(
    server: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    (src / "Particles").mkdir(parents=True)
    (src / "Particles/shiny_2sets.star").write_text("data_\nloop_\n_rlnImageName #1\n")
    (src / "emd_2660.map").write_bytes(b"\0" * 2000)
    with tarfile.open(tmp_path / "t.tar.gz", "w:gz") as tar:
        tar.add(src, arcname=".")
    server.set_body((tmp_path / "t.tar.gz").read_bytes())
    assert fetch(server.url, tmp_path / "dest") == 1
    assert "Particles/shiny_2sets.star" in capsys.readouterr().err
    assert not (tmp_path / "dest" / MARKER).exists()


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../escaped.txt"),
        tarfile.TarInfo("/tmp/absolute.txt"),
        tarfile.TarInfo("relion_benchmark/../../escaped.txt"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot"],
)
def test_members_escaping_the_destination_are_refused(
    member: tarfile.TarInfo,
    server: Served,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server.set_body(evil_tarball(member))
    dest = tmp_path / "a" / "dest"
    assert fetch(server.url, dest) == 1
    assert "refusing to unpack" in capsys.readouterr().err
    assert not (tmp_path / "a" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not (dest / MARKER).exists()


def test_a_link_out_of_the_destination_then_a_write_through_it_is_refused(
    server: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tarfile.TarInfo("data")
    link.type, link.linkname = tarfile.SYMTYPE, "../outside"
    server.set_body(evil_tarball(link))
    dest = tmp_path / "dest"
    assert fetch(server.url, dest) == 1
    assert "links outside" in capsys.readouterr().err
    assert not (dest / "data").exists()


def test_a_link_whose_directory_is_links_to_itself_cannot_point_out(
    server: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """a -> ., b -> ., then a/b/esc -> ../../outside: by its text esc stays inside; from where
    a/b really is, it points two levels above the destination."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, target in (("a", "."), ("b", "."), ("a/b/esc", "../../outside")):
            member = tarfile.TarInfo(name)
            member.type, member.linkname = tarfile.SYMTYPE, target
            tar.addfile(member)
    server.set_body(buffer.getvalue())
    dest = tmp_path / "x" / "dest"
    assert fetch(server.url, dest) == 1
    assert "'a/b/esc' links outside" in capsys.readouterr().err
    assert not os.path.lexists(dest / "esc")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--source", "ftp://example.org/x.tar.gz"], "--source 'ftp://example.org/x.tar.gz'"),
        (["--source", "s3://bucket-only"], "--source 's3://bucket-only'"),
        (["--sha256", "abc"], "--sha256 'abc'"),
        (["--expect-files", "0"], "--expect-files 0"),
        (["--particles-star", "../x.star"], "--particles-star '../x.star'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    argv: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "dest"
    assert main(["fetch", "--dest", str(dest), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and "not accepted" in err
    assert not dest.exists()


def test_dest_that_is_a_file_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "file"
    target.write_text("")
    assert main(["fetch", "--source", "http://127.0.0.1:9/x.tar.gz", "--dest", str(target)]) == 2
    assert "give a directory" in capsys.readouterr().err


def test_runs_as_a_module_without_a_terminal(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "relion_spot.staging",
            "fetch",
            "--source",
            "ftp://x/y",
            "--dest",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == 2 and "http(s):// URL or s3://bucket/key" in done.stderr


class _SpyS3:
    def __init__(self, client: Any) -> None:
        self._client = client
        self.ranges: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_object(self, **kwargs: Any) -> Any:
        self.ranges.append(kwargs["Range"])
        return self._client.get_object(**kwargs)


def test_s3_source_fetches_resumes_and_verifies(benchmark_tar: bytes, tmp_path: Path) -> None:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="lab-data")
        client.put_object(Bucket="lab-data", Key=f"benchmarks/{NAME}", Body=benchmark_tar)
        etag = client.head_object(Bucket="lab-data", Key=f"benchmarks/{NAME}")["ETag"]
        spy = _SpyS3(client)
        source = f"s3://lab-data/benchmarks/{NAME}"

        dest = tmp_path / "dest"
        part = dest / DOWNLOADS / (NAME + ".part")
        part.parent.mkdir(parents=True)
        third = len(benchmark_tar) // 3
        part.write_bytes(benchmark_tar[:third])  # what an interrupted earlier run left
        sidecar = {"source": source, "total": len(benchmark_tar), "validator": etag}
        part.with_name(part.name + ".json").write_text(json.dumps(sidecar))

        assert fetch(source, dest, "--expect-files", str(FILES), s3_client=spy) == 0
        assert spy.ranges == [f"bytes={third}-"]
        assert_staged(dest)
        assert fetch(source, dest, s3_client=spy) == 0
        assert spy.ranges == [f"bytes={third}-"]

        assert fetch("s3://lab-data/benchmarks/missing.tar.gz", tmp_path / "b", s3_client=spy) == 1


def _files(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize(
    ("stack", "said"),
    [("/data/other/stack.mrcs", "outside the set"), ("../other/stack.mrcs", "outside the set")],
    ids=["absolute", "dotdot"],
)
def test_a_set_whose_particles_name_stacks_outside_it_is_refused(
    tmp_path: Path, stack: str, said: str
) -> None:
    """RELION would read them from wherever they point (another project on /data)."""
    import starfile

    from relion_spot.staging.errors import StagingError
    from relion_spot.staging.unpack import verify

    build_dataset(tmp_path / "set")
    star = tmp_path / "set" / "Particles/shiny_2sets.star"
    table = starfile.read(star)
    table.loc[0, "rlnImageName"] = f"000001@{stack}"
    starfile.write(table, star, overwrite=True)
    with pytest.raises(StagingError, match=said):
        verify(tmp_path, _files(tmp_path), "Particles/shiny_2sets.star", "emd_2660.map", None)


def test_a_reference_that_is_not_beside_the_particles_is_refused(tmp_path: Path) -> None:
    """RELION runs where the particles STAR's path starts: the map must be found from there."""
    from relion_spot.staging.errors import StagingError
    from relion_spot.staging.unpack import verify

    build_dataset(tmp_path / "set")
    (tmp_path / "set" / "emd_2660.map").rename(tmp_path / "emd_2660.map")
    with pytest.raises(StagingError, match="is not in the set beside"):
        verify(tmp_path, _files(tmp_path), "Particles/shiny_2sets.star", "emd_2660.map", None)
