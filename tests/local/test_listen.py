"""The embedded cloud's AWS (moto's server) and metadata service answer the project's containers
and this host only: a container on another Docker network, which reaches the gateway address of
ours like any other address of the host, is refused. Real containers, real sockets."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from relion_spot.local.embedded import moto_server
from relion_spot.local.imds import LocalImds
from relion_spot.settings import Settings
from relion_spot.slurm.local import LABEL, SLURM_IMAGE, LocalSlurm, docker
from relion_spot.slurm.spec import LOCAL_CLOUD, spec_from_settings

PROBE = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"GET /moto-api/ HTTP/1.0\\r\\n\\r\\n")
        print("answered" if s.recv(12).startswith(b"HTTP/") else "silent")
except OSError as err:
    print(type(err).__name__)
"""


@pytest.fixture
def networks(slurm_images: None) -> Iterator[tuple[LocalSlurm, str]]:
    """A cluster's network, and a foreign one on the same engine."""
    prefix = f"relion-spot-test-{os.getpid()}-listen"
    local = LocalSlurm(
        prefix=prefix,
        spec=spec_from_settings(Settings(gpus=(1,)), 1, **LOCAL_CLOUD),
        key_file=None,
        state_dir=Path(tempfile.mkdtemp(prefix="relion-spot-state-")),
    )
    foreign = f"{prefix}-foreign"
    local.remove()
    docker("network", "rm", foreign, check=False)
    docker("network", "create", "--label", f"{LABEL}={prefix}", foreign)
    try:
        yield local, foreign
    finally:
        local.remove()
        docker("network", "rm", foreign, check=False)


def _probe(network: str, host: str, port: int) -> str:
    done = docker(
        "run", "--rm", "--network", network, "--entrypoint", "python3", SLURM_IMAGE,
        "-c", PROBE, host, str(port),
        timeout=120,
    )  # fmt: skip
    return done.stdout.strip()


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def test_moto_and_the_metadata_service_answer_only_the_projects_network(
    networks: tuple[LocalSlurm, str],
) -> None:
    local, foreign = networks
    host, interface = local.gateway_address(), local.bridge_interface()
    with mock_aws():
        ec2: Any = boto3.client("ec2", region_name="us-east-1")
        with (
            moto_server(host, interface=interface) as endpoint,
            LocalImds(ec2, notices={}.get, host=host, interface=interface) as imds,
        ):
            services = {"moto": _port(endpoint), "imds": imds.port}
            seen = {
                (name, where): _probe(network, host, port)
                for name, port in services.items()
                for where, network in (("own", local.network), ("foreign", foreign))
            }
            from_host = boto3.client(
                "sqs",
                region_name="us-east-1",
                endpoint_url=endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            ).list_queues()
    assert seen == {
        ("moto", "own"): "answered",
        ("moto", "foreign"): "ConnectionRefusedError",
        ("imds", "own"): "answered",
        ("imds", "foreign"): "ConnectionRefusedError",
    }
    assert from_host["ResponseMetadata"]["HTTPStatusCode"] == 200
