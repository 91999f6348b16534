"""Benchmark: unpacking a Class3D data set on the node's scratch (relion_spot.jobs.dataset).

A Class3D with ``--dataset s3://...`` unpacks its tarball on every attempt before RELION starts
(relion_spot.staging.unpack.extract, the staging fetch's own code). Particle stacks are float32
noise to a compressor, so a ``.tar.gz`` costs a single-threaded gzip pass for little size. This
builds one set of stacks, archives it both ways and unpacks each in turn, in one run, so the
ratio holds on a busy machine.

    python benchmarks/dataset_unpack.py [--megabytes 1024] [--stacks 16]

Printed: each archive's size and unpack rate, their ratio, and what each rate means for the
benchmark's 47 GiB on this machine (a node's NVMe and cores differ: not measured on AWS). Exit 0
when the plain tar unpacks at >= 2x the gzip rate (the advice the README gives), 1 otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relion_spot.staging.unpack import extract

BENCHMARK_GIB = 47.0
TARGET_RATIO = 2.0


class _Quiet:
    """The staging reporter's interface, saying nothing: only the wall time is read."""

    def start(self, what: str, total: int | None, done: int = 0) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


def make_stacks(root: Path, megabytes: int, stacks: int) -> Path:
    folder = root / "set" / "Particles"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_stack = megabytes * 2**20 // stacks // 4
    for index in range(stacks):
        rng.standard_normal(per_stack, dtype=np.float32).tofile(folder / f"stack{index:03d}.mrcs")
    return root / "set"


def unpack_rate(archive: Path, dest: Path) -> float:
    """MB/s of unpacked data: extraction alone, on a fresh directory."""
    dest.mkdir()
    started = time.perf_counter()
    files = extract(archive, dest, _Quiet())
    seconds = time.perf_counter() - started
    return sum(files.values()) / 1e6 / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--stacks", type=int, default=16)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="relion-spot-unpack-"))
    try:
        source = make_stacks(work, args.megabytes, args.stacks)
        rates: dict[str, float] = {}
        for mode, suffix in (("w", ".tar"), ("w:gz", ".tar.gz")):
            archive = work / f"set{suffix}"
            with tarfile.open(archive, mode) as tar:
                tar.add(source, arcname="set")
            rates[suffix] = unpack_rate(archive, work / f"out{suffix}")
            minutes = BENCHMARK_GIB * 2**30 / 1e6 / rates[suffix] / 60
            print(
                f"{suffix}: {archive.stat().st_size / 1e6:.0f} MB archive, unpacked at "
                f"{rates[suffix]:.0f} MB/s: {minutes:.1f} min for {BENCHMARK_GIB:g} GiB here"
            )
        ratio = rates[".tar"] / rates[".tar.gz"]
        met = ratio >= TARGET_RATIO
        print(f"plain tar / gzip unpack rate: {ratio:.2f}x")
        print(f"targets (plain tar >= {TARGET_RATIO:g}x gzip): {'met' if met else 'NOT met'}")
        return 0 if met else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
