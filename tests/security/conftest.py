"""The container fixtures of tests/slurm (images built by the project's script), shared here."""

from tests.slurm.conftest import slurm_images

__all__ = ["slurm_images"]
