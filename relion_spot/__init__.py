"""relion-spot: a containerized Slurm cluster on GPU spot for RELION 3D classification.

Kept import-light on purpose: Lambda functions and the programs that run on the controller and
on nodes import subpackages of this package without the CDK libraries being installed.
"""

__version__ = "0.1.0"
