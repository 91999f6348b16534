"""Waking a sleeping controller: its ECS service back to one task (see relion_spot.slurm.idle).

Two callers: ``relion-spot submit`` right after it queues a submission, and a scheduled function
(``handler``) that wakes the controller for anything waiting in the intake queue, whoever sent it
(another tool, a message the CLI could not follow with a wake, a submission that arrived while the
controller was going to sleep). The controller stays up while the queue holds anything and the
check counts the same messages, so the two never fight. Imports nothing outside the standard
library (it ships as Lambda code).
"""
