"""The container fixtures of tests/slurm (images built by the project's script; moto's server on
the cluster network), shared here rather than moved."""

from tests.slurm.conftest import moto_on_network, slurm_images

__all__ = ["moto_on_network", "slurm_images"]
