"""Slurm's power-save programs: EC2 instances come and go as Slurm asks for nodes.

slurmctld runs ``resume`` (launch), ``suspend`` (terminate) and ``resume_fail`` (clean up after a
node that never registered) with a host list argument, through the wrappers in
assets/slurm/bin. Each program logs one line per decision, talks to EC2 with plain boto3 (so it
runs unchanged against moto) and tells Slurm what happened through ``slurm.Slurm``.
"""
