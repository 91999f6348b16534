"""Slurm job templates for RELION: parameters, validated once, rendered from assets/slurm."""

from .class3d import NodeShape, render
from .parameters import Class3dParams, JobParameterError, from_mapping

__all__ = ["Class3dParams", "JobParameterError", "NodeShape", "from_mapping", "render"]
