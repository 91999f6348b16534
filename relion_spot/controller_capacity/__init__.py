"""The controller's Fargate capacity: Fargate Spot, and on-demand Fargate while Spot has none.

ECS does not move a service from one capacity provider to another by itself. A capacity provider
strategy's ``base`` puts the first tasks on one provider and ``weight`` shares the rest out; the
share of a provider with no capacity stays unplaced (the service reports
SERVICE_TASK_PLACEMENT_FAILURE with reason RESOURCE:FARGATE) and nothing overflows to the other.
For a service of one task, ``base=1`` on FARGATE would simply mean always on-demand.

So the controller's service runs on FARGATE_SPOT; on a placement failure EventBridge invokes the
fallback function (``handler``), which puts the service on FARGATE (a new deployment); when the
controller next puts itself to sleep (relion_spot.slurm.idle) it goes back to FARGATE_SPOT, so the
next wake tries Spot again. Imports nothing outside the standard library (it ships as Lambda code).
"""
