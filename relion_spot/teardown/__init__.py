"""Stack-delete sweep: terminate every instance a cluster's Slurm launched, before its network goes.

Slurm-launched instances are not CloudFormation resources; without this, ``cdk destroy`` would
fail on security groups still in use, or worse, leave GPU instances running and billing.
"""
