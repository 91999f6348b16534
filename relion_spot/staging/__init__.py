"""Staging the real benchmark dataset onto the shared file system.

    python -m relion_spot.staging fetch --dest DIR [--source URL|s3://bucket/key]

downloads the MRC-LMB relion_benchmark tarball (or copies it from S3) into DIR, unpacks it and
verifies it. It is meant to run as a batch job on the CPU node group: no terminal is assumed,
an interrupted run continues where it stopped (HTTP Range / S3 ranged GetObject on a ``.part``
file), and a marker written last makes a later run exit at once without touching the network.
"""

from .errors import BadInput, StagingError

BENCHMARK_URL = "https://ftp.mrc-lmb.cam.ac.uk/pub/scheres/relion_benchmark.tar.gz"
"""The benchmark tarball (47 GiB): the one place the default source is set. RELION's pages give
it as ftp:// on the same host and path; this fetcher speaks HTTP(S) Range and S3 only, so the
default is that path over HTTPS. Override with ``--source`` (e.g. an S3 copy in-region)."""

BENCHMARK_PARTICLES_STAR = "Particles/shiny_2sets.star"
BENCHMARK_REFERENCE_MAP = "emd_2660.map"

__all__ = [
    "BENCHMARK_PARTICLES_STAR",
    "BENCHMARK_REFERENCE_MAP",
    "BENCHMARK_URL",
    "BadInput",
    "StagingError",
]
