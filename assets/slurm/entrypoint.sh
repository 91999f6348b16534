#!/bin/sh
# Entrypoint of the Slurm image (PID 1 is tini): `controller` or `node [NAME]`.
# The Python side validates its input, writes config and key, then execs slurmctld or slurmd.
exec /opt/relion-spot/venv/bin/python -I -m relion_spot.slurm.entrypoint "$@"
