"""Benchmark: ``relion-spot stage`` and ``pull``'s own work on a folder, through S3 (moto).

A folder like a lab's particle set (stacks of equal size plus a STAR file and a map) is hashed
into a manifest (relion_spot.exchange.upload.folder_manifest), uploaded under in/ of a bucket,
then downloaded and verified into a second folder (relion_spot.exchange.download.pull), and the
two folders compared byte for byte. moto runs as a separate server process on 127.0.0.1, so its
CPU and memory are not the client's.

    python benchmarks/exchange.py [--megabytes 2048] [--files 64]

Printed: each phase's wall time and MB/s, this process's CPU time and peak RSS, and what the
hashing rate means for the benchmark's 47 GiB. Targets: hashing at >= 200 MB/s (the 47 GiB set
hashed in about 4 minutes before its upload starts) and a peak RSS <= 256 MB whatever the size
(files are streamed, never held).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cost_lambda import free_port, start_moto

TARGET_HASH_MB_S = 200.0
TARGET_RSS_MB = 256.0
BENCHMARK_GIB = 47.0
BUCKET = "bench-exchange"


def make_folder(root: Path, megabytes: int, files: int) -> Path:
    folder = root / "lab"
    (folder / "Particles").mkdir(parents=True)
    size = megabytes * 1024 * 1024 // files
    block = os.urandom(1024 * 1024)
    for n in range(files):
        with open(folder / "Particles" / f"stack_{n:04d}.mrcs", "wb") as out:
            left = size
            while left > 0:
                out.write(block[: min(left, len(block))])
                left -= len(block)
    (folder / "Particles" / "particles.star").write_text("data_particles\n" * 1000)
    (folder / "reference.mrc").write_bytes(block[:65536])
    return folder


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=2048)
    parser.add_argument("--files", type=int, default=64)
    args = parser.parse_args()
    if args.megabytes < 1 or not 1 <= args.files <= 4000:
        parser.error("--megabytes >= 1 and --files from 1 to 4000")

    import boto3

    from relion_spot.exchange.download import pull
    from relion_spot.exchange.upload import folder_manifest, upload

    port = free_port()
    server = start_moto(port)
    root = Path(tempfile.mkdtemp(prefix="relion-spot-bench-exchange-"))
    try:
        folder = make_folder(root, args.megabytes, args.files)
        total_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
        s3 = boto3.client(
            "s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="bench", aws_secret_access_key="bench",
        )  # fmt: skip
        s3.create_bucket(Bucket=BUCKET)
        print(f"folder: {args.files + 2} files, {total_mb:.0f} MB")

        phases = []
        started, cpu = time.monotonic(), cpu_seconds()
        manifest, pairs = folder_manifest(folder, submission="s", project="/data/p")
        phases.append(("hash", time.monotonic() - started, cpu_seconds() - cpu))
        started, cpu = time.monotonic(), cpu_seconds()
        upload(s3, BUCKET, "in/s/", manifest, pairs)
        phases.append(("upload", time.monotonic() - started, cpu_seconds() - cpu))
        started, cpu = time.monotonic(), cpu_seconds()
        got = pull(s3, BUCKET, "in/s/", root / "pulled")
        phases.append(("download+verify", time.monotonic() - started, cpu_seconds() - cpu))
        identical = all(
            (root / "pulled" / e.path).read_bytes() == (folder / e.path).read_bytes()
            for e in got.manifest.files
        )
        for name, wall, cpu in phases:
            print(f"{name}: {wall:.2f} s wall, {total_mb / wall:.0f} MB/s, own CPU {cpu:.2f} s")
        hash_rate = total_mb / phases[0][1]
        rss = peak_rss_mb()
        print(f"round trip byte for byte: {'identical' if identical else 'DIFFERS'}")
        print(f"peak RSS of this process: {rss:.0f} MB")
        print(
            f"the benchmark's {BENCHMARK_GIB:.0f} GiB hashed at this rate: "
            f"{BENCHMARK_GIB * 1024 / hash_rate / 60:.1f} min"
        )
        met = identical and hash_rate >= TARGET_HASH_MB_S and rss <= TARGET_RSS_MB
        print(
            f"targets (hash >= {TARGET_HASH_MB_S:.0f} MB/s, peak RSS <= {TARGET_RSS_MB:.0f} MB, "
            f"identical): {'met' if met else 'NOT met'}"
        )
        return 0 if met else 1
    finally:
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
