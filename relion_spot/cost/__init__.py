"""Per-job cost: job-attempt records from Slurm, spot-price pricing, billing reconciliation.

Runs in three places with one code path: the cost Lambda, the Slurm controller (the job
record writer) and the ``relion-spot cost`` report. Imports only the stdlib and boto3 (plus the
shared tag and catalog modules), so it ships as Lambda code without bundling.
"""
