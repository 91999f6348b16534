"""Names shared by the intake's construct (synth) and its drainer (runtime): no heavy imports."""

from __future__ import annotations

QUEUE_URL_ENV = "RELION_SPOT_INTAKE_QUEUE_URL"
TABLE_ENV = "RELION_SPOT_INTAKE_TABLE"
SBATCH_ENV = "RELION_SPOT_INTAKE_SBATCH"
"""The sbatch command (a path, or a command line); default ``sbatch``."""
SQUEUE_ENV = "RELION_SPOT_INTAKE_SQUEUE"
"""The squeue command (a path, or a command line); default ``squeue``."""
SCANCEL_ENV = "RELION_SPOT_INTAKE_SCANCEL"
"""The scancel command (a path, or a command line); default ``scancel``."""
ADMIN_IDS_ENV = "RELION_SPOT_INTAKE_ADMIN_IDS"
"""Comma-separated IAM unique ids (``AROA...`` of a role, ``AIDA...`` of a user) whose cancels
are honoured for anyone's submission: the stack sets its admin role's. Unset: only submitters."""
SUBMISSION_ID_ENV = "RELION_SPOT_SUBMISSION_ID"
"""Set in every job the intake submits: the submission the job's progress is reported under."""
REGION_ENV = "RELION_SPOT_INTAKE_REGION"
"""Set in every job the intake submits: the region of the intake table (TABLE_ENV, also set)."""
DATA_ROOT_ENV = "RELION_SPOT_INTAKE_DATA_ROOT"
"""Where the drainer sees the nodes' /data (the EFS data access point). Preflight runs against
the job's project directory there; unset or absent, preflight is skipped and the record says so."""
STAGE_BUCKETS_ENV = "RELION_SPOT_INTAKE_STAGE_BUCKETS"
"""Comma-separated S3 buckets the nodes may read (setting ``stage_buckets``); a staging job from
any other bucket is refused at intake. Unset (the embedded cloud): not checked."""
JOB_MODE_ENV = "RELION_SPOT_INTAKE_JOB_MODE"
"""``cloud`` (default: RELION from the Apptainer image, GPUs) or ``local`` (the embedded cloud)."""
RELION_IMAGE_ENV = "RELION_SPOT_INTAKE_RELION_IMAGE"
"""The RELION image source the job template uses; default by mode (relion_spot.jobs.class3d:
DEFAULT_IMAGE in the cloud, LOCAL_IMAGE on the embedded cloud)."""

CONTAINER_CACHE_ENV = "RELION_SPOT_INTAKE_CONTAINER_CACHE"
"""Where the drainer sees the nodes' /containers (the SIF cache), to find an image already
checked; unset, it asks Slurm whether an image job for it completed recently."""

NODE_DATA_DIR = "/data"
"""Where every node mounts the shared data (the EFS data access point); job paths live here."""

KEY = "submission_id"
"""The intake table's partition key, and the message field it comes from."""
REPORT_JOB = "report_job_id"
"""The Slurm job whose reports a submission's item takes (relion_spot.intake.report): the drainer
writes it with an accepted decision, the same as ``job_id``. In a node's report item it names
the job that reported; the controller's relay copies a report only into the item whose
``report_job_id`` is that job."""

PROGRESS = "progress"
LOG_TAIL = "log_tail"
"""The two attributes a job's report carries (relion_spot.intake.report)."""
REPORT_EXPIRES = "expires_at"
"""A node's report item's end (epoch seconds): the table's time to live removes it."""
REPORT_TTL_SECONDS = 14 * 86400
REPORT_KEY_PREFIX = "report:"
"""A node writes a job's report into its own item, keyed ``report:<instance ARN>:<submission
id>`` (``report_key``): the node roles may put items under their own instance's ARN and no
other key (``dynamodb:LeadingKeys`` against ``${ec2:SourceInstanceARN}``), so a node can never
write a submission's item, nor the report of a job on another node. The controller's relay
(relion_spot.intake.relay) copies a report into its submission's item once Slurm says that job
runs (or ran) on that instance."""
REPORT_ATTRIBUTES = (KEY, PROGRESS, LOG_TAIL, REPORT_JOB, REPORT_EXPIRES)
"""All a node's PutItem may name (``dynamodb:Attributes``): the key, which AWS requires in the
list, the report's two attributes, the job that made it and the item's end."""
REPORT_RETURN_VALUES = "NONE"
"""All a node's PutItem may ask back: nothing (ALL_OLD would return an item's old content)."""
INSTANCE_ARN_PREFIX_ENV = "RELION_SPOT_INSTANCE_ARN_PREFIX"
"""``arn:<partition>:ec2:<region>:<account>:instance/`` on the controller: with a node's
instance id (Slurm's ``instance_id``, set by the resume program) it names the node's report
items."""


def report_key(instance_arn: str, submission_id: str) -> str:
    """The key of the report that instance ``instance_arn`` makes for ``submission_id``."""
    return f"{REPORT_KEY_PREFIX}{instance_arn}:{submission_id}"


VISIBILITY_TIMEOUT_SECONDS = 300
"""How long a received submission stays hidden from the next receive. One drain step is one
squeue (30 s limit), the render and preflight (seconds: STAR and MRC headers only), one sbatch
(90 s limit) and two small DynamoDB writes; five minutes leaves room for a slow EFS."""
MAX_RECEIVES = 5
"""Receives before a submission goes to the dead-letter queue: a message that crashes the
drainer every time (a bug) stops after this many tries instead of looping forever."""
RECEIVE_WAIT_SECONDS = 20
"""Long poll: an idle drainer makes three receive requests a minute."""
