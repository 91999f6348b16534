"""The container fixtures of tests/slurm (images built by the project's script) and the staging
tests' small benchmark tarball, shared here."""

from tests.slurm.conftest import slurm_images
from tests.staging.conftest import benchmark_tar

__all__ = ["benchmark_tar", "slurm_images"]
