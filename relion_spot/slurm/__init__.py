"""Slurm as the project runs it: the cluster description, slurm.conf rendering, the container
entrypoint and the authentication key. Import-light: runs inside the Slurm image with boto3 only."""
