"""Durable job intake: submissions arrive on an SQS queue, the controller drains them into Slurm
exactly once, and each decision is recorded in a DynamoDB table keyed by the submission id.

    client.submit(...)               the CLI's side: one message on the queue, nothing else
    client.wait_for_acceptance(...)  polls the table for the decision
    python -m relion_spot.intake.drain [--once]
                                     runs in the controller container, next to slurmctld

How a retry after a crash stays a no-op, step by step, is in ``relion_spot.intake.drain``; the
message and record formats are in ``message`` and ``table``.
"""
