"""The whole embedded cloud in one context manager: what the demo and the end-to-end tests run.

    with EmbeddedCloud.start(prefix="relion-spot-demo", settings=Settings(gpus=(1,)),
                             gpu_count=1, work_dir=Path(".local/demo")) as cloud:
        cloud.local.run("sbatch", ...)

Started in order: the cluster's Docker network; moto's server on this host's address on that
network, bound to its bridge (the containers' "AWS"; no other network's container can reach it,
it reaches nothing); in moto the
Slurm key parameter, the job-record and cost tables, the spot-event table, the job intake's queue
and table, the controller's ECS service, a subnet and a launch template per partition; the
controller container (the same
image and entrypoint as on Fargate, with the intake's drainer beside slurmctld); the reconciler
with its metadata service, which turns launched instances into node containers running slurmd
and the spot watcher. Closing stops and removes all of it; the work directory
(state, shared data) stays for inspection.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3

from ..cost.store import create_tables
from ..intake import config as intake_config
from ..intake import report
from ..intake.table import create_table as create_intake_table
from ..node import stage_credentials
from ..node.orphan import ORPHAN_SECONDS_ENV
from ..node.spot_watcher import EVENTS_FILE_ENV, EVENTS_TABLE_ENV, POLL_SECONDS_ENV
from ..settings import Settings
from ..slurm import idle
from ..slurm.key import KEY_PARAMETER_ARN_ENV
from ..slurm.local import (
    CONTAINER_CACHE,
    CONTAINERS_MOUNT,
    LOCAL_NODE_IMAGE,
    SLURM_IMAGE,
    LocalSlurm,
    wait_until,
)
from ..slurm.spec import LOCAL_CLOUD, spec_from_settings
from ..slurm_key.parameter import ensure, parameter_name
from .cloud import MOTO_CREDENTIALS, prepare_cloud
from .listen import ListenError, project_listener
from .reconciler import Reconciler

log = logging.getLogger(__name__)

RECORDS_TABLE = "job-records"
COSTS_TABLE = "job-costs"
SPOT_EVENTS_TABLE = "spot-events"
INTAKE_TABLE = "intake"
RECORDS_TABLE_ENV = "RELION_SPOT_RECORDS_TABLE"
JOB_USER_UID = 1000
"""The job user of the image (``relion``): owns the shared data directory, as on EFS's /data."""
SPOT_POLL_SECONDS = "2"
"""The spot watcher's IMDS poll here (and the job-report forwarder's): well inside any grace a
test or the demo gives."""


def moto_client(service: str, *, endpoint: str, region: str) -> Any:
    """A boto3 client for moto at ``endpoint``, with its placeholder credentials."""
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


class EmbeddedCloudError(RuntimeError):
    """A part of the embedded cloud would not start; the message says which and why."""


@contextmanager
def moto_server(host: str, *, interface: str) -> Iterator[str]:
    """moto's server on ``host`` (a free port), reachable only through ``interface`` and from
    this host (relion_spot.local.listen); yields its endpoint URL, stops it on exit."""
    try:
        listener = project_listener(host, interface)
    except ListenError as err:
        raise EmbeddedCloudError(f"moto's server: {err}") from None
    port = listener.getsockname()[1]
    with listener:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relion_spot.local.moto_serve",
                "--fd",
                str(listener.fileno()),
            ],
            pass_fds=(listener.fileno(),),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    endpoint = f"http://{host}:{port}"
    try:

        def answers() -> bool:
            if server.poll() is not None:
                raise EmbeddedCloudError(f"moto's server exited ({server.returncode})")
            # The socket listens before moto does: only an HTTP answer says moto serves.
            connection = http.client.HTTPConnection(host, port, timeout=2)
            try:
                connection.request("GET", "/moto-api/")
                connection.getresponse().read()
                return True
            except OSError:
                return False
            finally:
                connection.close()

        wait_until(answers, timeout=30, what=f"moto's server at {endpoint}")
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def wait_for_controller(local: LocalSlurm, timeout: float = 90) -> None:
    """Until ``scontrol ping`` says the controller is UP (fails at once if its container died)."""

    def answers() -> bool:
        if not local.is_running():
            raise EmbeddedCloudError(f"the controller container exited:\n{local.logs(tail=40)}")
        try:
            return "UP" in local.run("scontrol", "ping")
        except Exception:
            return False

    wait_until(answers, timeout=timeout, what=lambda: f"slurmctld to answer:\n{local.logs()}")


def named_by(prefix: str, work_dir: Path) -> str:
    """``prefix`` and a digest of ``work_dir``: embedded clouds started from different work
    directories (two clones, a demo beside the test suite) never share containers."""
    digest = hashlib.sha256(str(work_dir.resolve()).encode()).hexdigest()[:8]
    return f"{prefix}-{digest}"


@dataclass
class EmbeddedCloud:
    """A running embedded cloud: the cluster's containers, moto, and the clients to reach it."""

    local: LocalSlurm
    endpoint: str
    region: str
    env: dict[str, str]
    """The controller's and nodes' environment (endpoint, credentials, key, tables)."""
    reconciler: Reconciler

    def client(self, service: str) -> Any:
        return moto_client(service, endpoint=self.endpoint, region=self.region)

    def instances(self) -> list[dict]:
        """Every instance of the cluster in moto (any state), oldest first."""
        from .. import tags

        pages = (
            self.client("ec2")
            .get_paginator("describe_instances")
            .paginate(Filters=[{"Name": f"tag:{tags.CLUSTER}", "Values": [self.cluster]}])
        )
        found = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        return sorted(found, key=lambda i: i["LaunchTime"])

    @property
    def cluster(self) -> str:
        return self.local.spec.cluster_name

    def cost_service(self) -> Any:
        """The cost function's own service over this cloud's records and costs tables, priced at
        the on-demand ceiling (moto's spot market quotes a placeholder $0.00001/hour)."""
        from ..cost.config import CostConfig
        from ..cost.handler import Clients, CostService
        from ..cost.prices import OnDemandCeiling

        config = CostConfig.from_env(
            {
                "RELION_SPOT_CLUSTER": self.cluster,
                "RELION_SPOT_RECORDS_TABLE": RECORDS_TABLE,
                "RELION_SPOT_COSTS_TABLE": COSTS_TABLE,
            }
        )
        clients = Clients(
            ec2=self.client("ec2"),
            dynamodb=self.client("dynamodb"),
            cloudwatch=self.client("cloudwatch"),
            ce=self.client("ce"),
        )
        service = CostService(config, clients)
        service.prices = OnDemandCeiling()
        return service

    @classmethod
    @contextmanager
    def start(
        cls,
        *,
        prefix: str,
        settings: Settings,
        gpu_count: int,
        work_dir: Path,
        data_dir: Path | None = None,
        suspend_time: int | None = None,
        node_image: str = LOCAL_NODE_IMAGE,
        controller_idle_seconds: int | None = None,
        node_orphan_seconds: int | None = None,
    ) -> Iterator[EmbeddedCloud]:
        """Start it all (see the module docstring); ``work_dir`` gets ``state/`` and, unless
        ``data_dir`` names the directory the cluster's /data is, ``data/``.

        ``suspend_time``: SuspendTime for this cloud only (tests and the demo do not wait the
        deployed minimum). ``controller_idle_seconds``: let the controller put itself to sleep
        (its ECS service in moto to 0; the reconciler then stops its container, and starts it
        again when the service is woken); None: it stays up. ``node_orphan_seconds``: how long
        an idle node whose controller does not answer lives on (relion_spot.node.orphan); None:
        the deployed default."""
        spec = spec_from_settings(settings, gpu_count, **LOCAL_CLOUD)
        if suspend_time is not None:
            spec = replace(spec, suspend_time=suspend_time)
        state_dir, data_dir = work_dir / "state", data_dir or work_dir / "data"
        shutil.rmtree(state_dir, ignore_errors=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(data_dir, JOB_USER_UID, JOB_USER_UID)
        local = LocalSlurm(
            prefix=prefix,
            spec=spec,
            key_file=None,
            state_dir=state_dir,
            image=SLURM_IMAGE,
            node_image=node_image,
            data_dir=data_dir,
            containers_dir=CONTAINER_CACHE,
        )
        local.remove()
        started = time.monotonic()
        try:
            with moto_server(
                local.gateway_address(), interface=local.bridge_interface()
            ) as endpoint:
                env = _prepare_moto(endpoint, settings.region or "us-east-1", spec)
                stage_env = _stage_reader(endpoint, env, spec, settings.stage_buckets)
                cpu_node_env = stage_env | _results_exchange(endpoint, env, spec)
                if controller_idle_seconds is not None:
                    env[idle.IDLE_SECONDS_ENV] = str(controller_idle_seconds)
                if node_orphan_seconds is not None:
                    env[ORPHAN_SECONDS_ENV] = str(node_orphan_seconds)
                local.start_controller(env=env)
                wait_for_controller(local)
                region = env["AWS_REGION"]
                reconciler = Reconciler(
                    local,
                    moto_client("ec2", endpoint=endpoint, region=region),
                    node_env=env | stage_env,
                    cpu_node_env=cpu_node_env,
                    spot_watcher=True,
                    controller_service=(env[idle.CLUSTER_ENV], env[idle.SERVICE_ENV]),
                    ecs=moto_client("ecs", endpoint=endpoint, region=region),
                )
                with reconciler:
                    log.info(
                        "embedded cloud %s up in %.1f s (moto at %s)",
                        spec.cluster_name,
                        time.monotonic() - started,
                        endpoint,
                    )
                    yield cls(local, endpoint, region, env, reconciler)
        finally:
            local.remove()


def _stage_reader(
    endpoint: str, env: dict[str, str], spec: Any, buckets: tuple[str, ...]
) -> dict[str, str]:
    """With stage_buckets, as the cluster stack: the drainer learns the buckets (``env``, which
    the controller gets) and every node the stage reader's role, which moto creates (staging
    jobs on CPU nodes, Class3D data sets on GPU nodes); the nodes' environment is returned."""
    if not buckets:
        return {}
    env[intake_config.STAGE_BUCKETS_ENV] = ",".join(buckets)
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
    role = moto_client("iam", endpoint=endpoint, region=env["AWS_REGION"]).create_role(
        RoleName=f"{spec.cluster_name}-stage-reader", AssumeRolePolicyDocument=json.dumps(trust)
    )["Role"]["Arn"]
    return {stage_credentials.ROLE_ENV: role}


def _results_exchange(endpoint: str, env: dict[str, str], spec: Any) -> dict[str, str]:
    """As the cluster stack's ResultsExchange: a bucket in moto, and the job role only the CPU
    nodes' broker uses; the bucket's name goes in ``env`` (the stack's output), and the CPU
    nodes' environment is returned."""
    region = env["AWS_REGION"]
    bucket = f"{spec.cluster_name}-exchange".lower()
    s3 = moto_client("s3", endpoint=endpoint, region=region)
    if region == "us-east-1":
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
    role = moto_client("iam", endpoint=endpoint, region=region).create_role(
        RoleName=f"{spec.cluster_name}-exchange-job-role",
        AssumeRolePolicyDocument=json.dumps(trust),
    )["Role"]["Arn"]
    env[stage_credentials.EXCHANGE_BUCKET_ENV] = bucket
    return {
        stage_credentials.EXCHANGE_ROLE_ENV: role,
        stage_credentials.EXCHANGE_BUCKET_ENV: bucket,
    }


def _prepare_moto(endpoint: str, region: str, spec: Any) -> dict[str, str]:
    """Create in moto what the cluster stack creates in AWS; the containers' environment."""

    def client(service: str) -> Any:
        return moto_client(service, endpoint=endpoint, region=region)

    # As the stack's custom resource makes it (relion_spot.slurm_key): a SecureString.
    key_name = parameter_name(spec.cluster_name)
    ssm = client("ssm")
    ensure(ssm, key_name)
    key_arn = ssm.get_parameter(Name=key_name)["Parameter"]["ARN"]
    dynamodb = client("dynamodb")
    create_tables(dynamodb, records_table=RECORDS_TABLE, costs_table=COSTS_TABLE)
    dynamodb.create_table(
        TableName=SPOT_EVENTS_TABLE,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "instance_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "instance_id", "KeyType": "HASH"}],
    )
    queue_url = client("sqs").create_queue(QueueName=f"{spec.cluster_name}-intake")["QueueUrl"]
    ecs = client("ecs")
    service = f"{spec.cluster_name}-controller"
    ecs.create_cluster(clusterName=spec.cluster_name)
    ecs.register_task_definition(
        family=service,
        containerDefinitions=[{"name": "slurmctld", "image": SLURM_IMAGE, "memory": 1024}],
    )
    ecs.create_service(
        cluster=spec.cluster_name, serviceName=service, taskDefinition=service, desiredCount=1
    )
    create_intake_table(dynamodb, INTAKE_TABLE)
    return {
        **prepare_cloud(client("ec2"), spec, endpoint=endpoint),
        intake_config.QUEUE_URL_ENV: queue_url,
        intake_config.TABLE_ENV: INTAKE_TABLE,
        intake_config.DATA_ROOT_ENV: intake_config.NODE_DATA_DIR,
        intake_config.JOB_MODE_ENV: "local",
        intake_config.CONTAINER_CACHE_ENV: CONTAINERS_MOUNT,
        # As the stack sets it on the controller: whose instances its report relay reads.
        intake_config.INSTANCE_ARN_PREFIX_ENV: "arn:{}:ec2:{}:{}:instance/".format(
            ssm.meta.partition, region, client("sts").get_caller_identity()["Account"]
        ),
        KEY_PARAMETER_ARN_ENV: key_arn,
        RECORDS_TABLE_ENV: RECORDS_TABLE,
        EVENTS_TABLE_ENV: SPOT_EVENTS_TABLE,
        # Where the node bootstrap puts it: on the shared file system, which jobs write too.
        EVENTS_FILE_ENV: (
            f"{intake_config.NODE_DATA_DIR}/.relion-spot/spot-events/{spec.cluster_name}.jsonl"
        ),
        POLL_SECONDS_ENV: SPOT_POLL_SECONDS,
        report.POLL_SECONDS_ENV: SPOT_POLL_SECONDS,
        idle.CLUSTER_ENV: spec.cluster_name,
        idle.SERVICE_ENV: service,
    }
