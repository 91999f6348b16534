"""Tag keys shared by the stacks, the power-save programs, the teardown and the cost tracker.

One place, because IAM conditions, the teardown sweep and cost allocation all match on these
exact strings: a key spelt differently in one of them would silently miss resources.
"""

PREFIX = "relion-spot:"

CLUSTER = f"{PREFIX}cluster"
"""The cluster (= cluster stack) a resource belongs to. IAM conditions and teardown key on it."""
STACK = f"{PREFIX}stack"
PARTITION = f"{PREFIX}partition"
NODE = f"{PREFIX}node"
"""The Slurm node name an instance plays, e.g. ``gpu-3``; the node learns its name from it."""
INSTANCE_TYPE = f"{PREFIX}instance-type"

JOB_ID = f"{PREFIX}job-id"
JOB_USER = f"{PREFIX}job-user"
JOB_NAME = f"{PREFIX}job-name"
JOB_TAG_KEYS = (JOB_ID, JOB_USER, JOB_NAME)
"""Tags a node sets on itself while a job runs on it (and removes after)."""

PROJECT = "Project"
"""The user's own cost-allocation tag, applied to every resource of every stack."""
