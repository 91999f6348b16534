"""Storage I/O in a job's cost: the node's NFS counters, published by its Prolog/Epilog to moto's
CloudWatch, read back and priced by the cost Lambda; figures worked by hand."""

from __future__ import annotations

import pytest

from relion_spot.cost import config
from relion_spot.cost.handler import handle
from relion_spot.node import storage_io

from .conftest import cost_item, write_attempt

GIB = 2**30
READ_RATE, WRITE_RATE = 0.03, 0.06
"""EFS Elastic throughput, us-east-1, per GiB read and written (the dated price table's)."""


def mountstats(data: tuple[int, int], containers: tuple[int, int] = (0, 0)) -> str:
    """/proc/self/mountstats as a node with its EFS mounts (through efs-utils' TLS tunnel)
    shows it; ``bytes:`` holds normal, direct, then server read/write bytes, then pages."""
    root = "device /dev/nvme0n1p1 mounted on / with fstype ext4\n"
    blocks = []
    for mount, (read, written) in (("/data", data), ("/containers", containers)):
        blocks.append(
            f"device 127.0.0.1:/ mounted on {mount} with fstype nfs4 statvers=1.1\n"
            "\topts:\trw,vers=4.1,rsize=1048576,wsize=1048576,hard,proto=tcp\n"
            "\tage:\t812\n"
            f"\tbytes:\t{read + 77} {written + 5} 0 0 {read} {written} {read // 4096} 0\n"
            "\tevents:\t1 2 3\n"
        )
    return root + "".join(blocks)


def meter(account, tmp_path, job_id: str, *, at: float, before: str, after: str) -> str:
    env = {
        "SLURM_JOB_ID": job_id,
        storage_io.CLUSTER_ENV: account.environ[config.CLUSTER],
        storage_io.STATE_DIR_ENV: str(tmp_path / "io"),
    }
    storage_io.start(env, before, now=at)
    return storage_io.end(env, after, account.clients.cloudwatch)


def test_parse_takes_the_server_bytes_of_nfs_mounts_only() -> None:
    stats = storage_io.parse_mountstats(mountstats((10, 20), (30, 40)))
    assert stats == {"/data": (10, 20), "/containers": (30, 40)}
    counters = storage_io.shared_counters(mountstats((10, 20), (30, 40)))
    assert counters == storage_io.Counters(40, 60, ("/containers", "/data"))
    bind_mount = "device /dev/sda1 mounted on /data with fstype ext4\n"
    assert storage_io.shared_counters(bind_mount) is None


def test_a_garbled_bytes_line_is_refused() -> None:
    text = "device h:/ mounted on /data with fstype nfs4\n\tbytes:\t1 2 x\n"
    with pytest.raises(storage_io.MountstatsError, match="/data"):
        storage_io.parse_mountstats(text)


def test_epilog_without_nfs_publishes_nothing_and_exits_zero(account, tmp_path) -> None:
    stats = tmp_path / "mountstats"
    stats.write_text("device /dev/sda1 mounted on /data with fstype ext4\n")
    env = {
        "SLURM_JOB_ID": "5",
        storage_io.CLUSTER_ENV: "c",
        storage_io.STATE_DIR_ENV: str(tmp_path),
    }
    for action in ("start", "end"):
        assert (
            storage_io.main(
                [action], environ=env, cloudwatch=account.clients.cloudwatch, mountstats_path=stats
            )
            == 0
        )
    assert account.clients.cloudwatch.list_metrics(Namespace="RelionSpot")["Metrics"] == []
    assert storage_io.main(["stop"], environ=env, mountstats_path=stats) == 2


def test_each_attempt_pays_for_the_bytes_its_node_moved(account, reclaimed_job, tmp_path) -> None:
    """Attempt 1 (reclaimed) copied the 47 GiB particle stack to scratch and wrote 1 GiB of
    iteration output before the reclaim; attempt 2 copied it again (a fresh node's scratch is
    empty) and wrote 29 GiB, the SIF read from /containers adding 2 GiB.

    By hand, at $0.03/GiB read and $0.06/GiB written:
      attempt 1: 47 x 0.03 + 1 x 0.06           = 1.41 + 0.06 = $1.47 (reclaimed)
      attempt 2: (47 + 2) x 0.03 + 29 x 0.06     = 1.47 + 1.74 = $3.21
      storage I/O $4.68, reclaimed $1.47, share 1.47 / 4.68 = 0.3141025641
    """
    account.environ[config.STORAGE_READ_RATE] = str(READ_RATE)
    account.environ[config.STORAGE_WRITE_RATE] = str(WRITE_RATE)
    first_env, second_env = reclaimed_job["attempts"]
    first_start, second_start = int(first_env["START"]), int(second_env["START"])
    base = (5 * GIB, 3 * GIB)
    meter(
        account, tmp_path, "41", at=first_start + 1,
        before=mountstats(base),
        after=mountstats((base[0] + 47 * GIB, base[1] + 1 * GIB)),
    )  # fmt: skip
    meter(
        account, tmp_path, "41", at=second_start + 2,
        before=mountstats((0, 0), (0, 0)),
        after=mountstats((47 * GIB, 29 * GIB), (2 * GIB, 0)),
    )  # fmt: skip
    for env in reclaimed_job["attempts"]:
        assert write_attempt(account, env) == "written"
    handle({"action": "schedule"}, account.service(), now=reclaimed_job["now"])

    item = cost_item(account, "41")
    first, second = item["attempts"]
    assert (first["storage_read_bytes"], first["storage_write_bytes"]) == (47 * GIB, GIB)
    assert (second["storage_read_bytes"], second["storage_write_bytes"]) == (49 * GIB, 29 * GIB)
    assert first["storage_io_usd"] == pytest.approx(1.47, abs=1e-9)
    assert second["storage_io_usd"] == pytest.approx(3.21, abs=1e-9)
    io = item["cost_breakdown"]["storage_io"]
    assert io["usd"] == pytest.approx(4.68, abs=1e-9)
    assert io["reclaimed_usd"] == pytest.approx(1.47, abs=1e-9)
    assert io["reclaimed_share"] == pytest.approx(0.3141025641, abs=1e-9)
    lost, kept = reclaimed_job["expected"]
    breakdown = item["cost_breakdown"]
    assert breakdown["compute"]["usd"] + breakdown["ebs"]["usd"] == pytest.approx(
        lost + kept, abs=1e-9
    )
    assert item["estimate_usd"] == pytest.approx(lost + kept + 4.68, abs=1e-9)
    assert item["reclaimed_usd"] == pytest.approx(lost + 1.47, abs=1e-9)
    assert "storage-io-unmetered" not in item["flags"]


def test_bursting_throughput_meters_the_bytes_but_bills_nothing(
    account, reclaimed_job, tmp_path
) -> None:
    first_env, _ = reclaimed_job["attempts"]
    meter(
        account, tmp_path, "41", at=int(first_env["START"]),
        before=mountstats((0, 0)), after=mountstats((3 * GIB, GIB)),
    )  # fmt: skip
    for env in reclaimed_job["attempts"]:
        write_attempt(account, env)
    handle({"action": "schedule"}, account.service(), now=reclaimed_job["now"])
    item = cost_item(account, "41")
    first, second = item["attempts"]
    assert (first["storage_read_bytes"], first["storage_io_usd"]) == (3 * GIB, 0.0)
    assert second["storage_read_bytes"] is None, "the second attempt's node published nothing"
    assert item["flags"] == ["storage-io-unmetered"]


def test_cost_command_shows_each_component_in_every_format(
    account, reclaimed_job, tmp_path
) -> None:
    """``relion-spot cost`` over the job priced above: the storage I/O of both attempts,
    its reclaimed part, and the GiB moved, in JSON, CSV and the table."""
    import argparse
    import csv
    import io
    import json

    from relion_spot.cost import report

    from .conftest import CLUSTER, COSTS

    account.environ[config.STORAGE_READ_RATE] = str(READ_RATE)
    account.environ[config.STORAGE_WRITE_RATE] = str(WRITE_RATE)
    for env, moved in zip(
        reclaimed_job["attempts"], ((47 * GIB, GIB), (47 * GIB, 29 * GIB)), strict=True
    ):
        meter(
            account, tmp_path, "41", at=int(env["START"]),
            before=mountstats((0, 0)), after=mountstats(moved),
        )  # fmt: skip
        write_attempt(account, env)
    handle({"action": "schedule"}, account.service(), now=reclaimed_job["now"])

    def run(*argv: str) -> str:
        parser = argparse.ArgumentParser()
        report.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["cost", "--cluster", CLUSTER, "--table", COSTS, *argv])
        out = io.StringIO()
        assert args.func(args, client=account.dynamodb, out=out) == 0
        return out.getvalue()

    # by hand: 1.41 + 0.06 = 1.47 (reclaimed) and 1.41 + 1.74 = 3.15; 94 GiB read, 30 written
    (job,) = json.loads(run("--format", "json"))
    assert job["storage_io_usd"] == pytest.approx(4.62, abs=1e-9)
    assert job["reclaimed_storage_io_usd"] == pytest.approx(1.47, abs=1e-9)
    assert (job["storage_read_gib"], job["storage_write_gib"]) == (94.0, 30.0)
    assert job["cost_breakdown"]["storage_io"]["reclaimed_share"] == pytest.approx(
        1.47 / 4.62, abs=1e-9
    )
    assert job["compute_usd"] + job["ebs_usd"] + job["storage_io_usd"] == pytest.approx(
        job["estimate_usd"], abs=1e-9
    )
    (row,) = csv.DictReader(io.StringIO(run("--format", "csv", "--by", "user")))
    assert float(row["storage_io_usd"]) == pytest.approx(4.62, abs=1e-9)
    assert float(row["reclaimed_storage_io_usd"]) == pytest.approx(1.47, abs=1e-9)
    table = run()
    assert "$4.6200" in table and "94.00" in table


def test_a_reading_is_read_from_cloudwatch_once_then_kept_with_the_cost(
    account, reclaimed_job, tmp_path
) -> None:
    """GetMetricData bills per metric read: the hourly re-pricing over the week's window takes
    readings from the stored cost, and asks CloudWatch only for attempts that ended within the
    last six hours."""
    from relion_spot.cost.handler import METER_WAIT

    account.environ[config.STORAGE_READ_RATE] = str(READ_RATE)
    for env in reclaimed_job["attempts"]:
        meter(
            account, tmp_path, "41", at=int(env["START"]),
            before=mountstats((0, 0)), after=mountstats((GIB, 0)),
        )  # fmt: skip
        write_attempt(account, env)
    first = account.service()
    handle({"action": "schedule"}, first, now=reclaimed_job["now"])
    assert first.storage_io.requests == 1
    later = account.service()
    handle({"action": "schedule"}, later, now=reclaimed_job["now"] + METER_WAIT + 3600)
    assert later.storage_io.requests == 0, "nothing recent: CloudWatch is not asked"
    item = cost_item(account, "41")
    assert [a["storage_read_bytes"] for a in item["attempts"]] == [GIB, GIB]
    assert item["cost_breakdown"]["storage_io"]["usd"] == pytest.approx(2 * READ_RATE)


def test_an_attempt_unmetered_past_the_wait_is_not_looked_for(account, reclaimed_job) -> None:
    from relion_spot.cost.handler import METER_WAIT

    for env in reclaimed_job["attempts"]:
        write_attempt(account, env)
    service = account.service()
    handle({"action": "schedule"}, service, now=reclaimed_job["now"] + METER_WAIT + 3600)
    assert service.storage_io.requests == 0
    assert cost_item(account, "41")["flags"] == ["storage-io-unmetered"]
