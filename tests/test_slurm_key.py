"""The custom resource that makes each cluster's Slurm key parameter, against moto's SSM."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from relion_spot.slurm.key import MIN_KEY_BYTES
from relion_spot.slurm_key import handler
from relion_spot.slurm_key.parameter import parameter_name

NAME = parameter_name("lab-gpu1")


class _Recorder(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_PUT(self) -> None:
        _Recorder.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def response_url() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback stand-in for CloudFormation's pre-signed response URL; the raw bodies."""
    _Recorder.bodies = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/reply", _Recorder.bodies
    server.shutdown()


class LambdaContext:
    log_stream_name = "2026/11/30/[$LATEST]test"


@pytest.fixture
def ssm(moto_aws: None) -> Any:
    return boto3.client("ssm", region_name="us-east-1")


def _run(request_type: str, url: str, *, name: str = NAME, physical_id: str | None = None) -> None:
    event: dict[str, Any] = {
        "RequestType": request_type,
        "ResponseURL": url,
        "StackId": "stack",
        "RequestId": "req",
        "LogicalResourceId": "SlurmKeyParameter",
        "ResourceProperties": {"ServiceToken": "arn", handler.NAME_PROPERTY: name},
    }
    if physical_id is not None:
        event["PhysicalResourceId"] = physical_id
    handler.on_event(event, LambdaContext())


def _value(ssm: Any, name: str = NAME) -> str:
    return str(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])


def test_create_stores_a_new_secure_string_and_replies_without_it(ssm, response_url) -> None:
    url, bodies = response_url
    _run("Create", url)
    (described,) = ssm.describe_parameters()["Parameters"]
    assert described["Name"] == NAME
    assert described["Type"] == "SecureString"
    assert described["Tier"] == "Standard"
    assert described.get("KeyId", "alias/aws/ssm") == "alias/aws/ssm", "the free AWS managed key"
    key = _value(ssm)
    assert len(key.encode()) >= MIN_KEY_BYTES, "what relion_spot.slurm.key requires"
    (body,) = bodies
    assert key.encode() not in body, "the key is never in the reply"
    reply = json.loads(body)
    assert reply["Status"] == "SUCCESS"
    assert reply["PhysicalResourceId"] == NAME
    assert reply["Data"] == {"Outcome": "created"}


def test_each_create_makes_a_different_key(ssm, response_url) -> None:
    url, _ = response_url
    other = parameter_name("lab-gpu4")
    _run("Create", url)
    _run("Create", url, name=other)
    assert _value(ssm) != _value(ssm, other)


def test_update_keeps_the_key(ssm, response_url) -> None:
    """slurmctld and the running nodes hold the key: an update must never make a new one."""
    url, bodies = response_url
    _run("Create", url)
    before = ssm.get_parameter(Name=NAME, WithDecryption=True)["Parameter"]
    _run("Update", url, physical_id=NAME)
    after = ssm.get_parameter(Name=NAME, WithDecryption=True)["Parameter"]
    assert (after["Value"], after["Version"]) == (before["Value"], before["Version"])
    reply = json.loads(bodies[-1])
    assert (reply["Status"], reply["PhysicalResourceId"]) == ("SUCCESS", NAME)
    assert reply["Data"] == {"Outcome": "kept"}


def test_update_to_another_name_makes_it_and_the_delete_of_the_old_id_removes_the_old(
    ssm, response_url
) -> None:
    url, bodies = response_url
    renamed = parameter_name("lab-b-gpu1")
    _run("Create", url)
    _run("Update", url, name=renamed, physical_id=NAME)
    assert json.loads(bodies[-1])["PhysicalResourceId"] == renamed
    # CloudFormation then deletes the replaced resource: its old physical id and properties.
    _run("Delete", url, physical_id=NAME)
    assert [p["Name"] for p in ssm.describe_parameters()["Parameters"]] == [renamed]


def test_a_create_finding_the_parameter_there_keeps_it(ssm, response_url) -> None:
    """Left by an earlier stack of this cluster, or a retried request: adopted, not replaced."""
    url, bodies = response_url
    ssm.put_parameter(Name=NAME, Value="k" * 64, Type="SecureString")
    _run("Create", url)
    assert _value(ssm) == "k" * 64
    reply = json.loads(bodies[-1])
    assert (reply["Status"], reply["Data"]) == ("SUCCESS", {"Outcome": "kept"})


def test_delete_removes_the_parameter(ssm, response_url) -> None:
    url, bodies = response_url
    _run("Create", url)
    _run("Delete", url, physical_id=NAME)
    assert ssm.describe_parameters()["Parameters"] == []
    reply = json.loads(bodies[-1])
    assert (reply["Status"], reply["Data"]) == ("SUCCESS", {"Outcome": "deleted"})


def test_delete_of_a_missing_parameter_succeeds(ssm, response_url) -> None:
    url, bodies = response_url
    _run("Delete", url, physical_id=NAME)
    reply = json.loads(bodies[-1])
    assert (reply["Status"], reply["Data"]) == ("SUCCESS", {"Outcome": "absent"})


def test_a_failed_create_replies_an_id_whose_delete_removes_nothing(ssm, response_url) -> None:
    """A failed Create is rolled back with a Delete of the id it replied: that Delete must not
    remove a parameter this resource never made."""
    url, bodies = response_url
    ssm.put_parameter(Name=NAME, Value="k" * 64, Type="SecureString")
    _run("Create", url, name="/somewhere/else")
    failed = json.loads(bodies[-1])
    assert failed["Status"] == "FAILED"
    assert "not a Slurm key parameter" in failed["Reason"]
    _run("Delete", url, name="/somewhere/else", physical_id=failed["PhysicalResourceId"])
    assert json.loads(bodies[-1])["Status"] == "SUCCESS"
    assert _value(ssm) == "k" * 64


def test_a_missing_name_fails_with_its_reason(ssm, response_url) -> None:
    url, bodies = response_url
    _run("Create", url, name="")
    reply = json.loads(bodies[-1])
    assert reply["Status"] == "FAILED"
    assert f"{handler.NAME_PROPERTY} is missing" in reply["Reason"]


class RefusingSsm:
    def put_parameter(self, **kwargs: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}},
            "PutParameter",
        )


def test_a_refusal_fails_the_stack_with_its_reason(response_url) -> None:
    url, bodies = response_url
    handler.on_event(
        {
            "RequestType": "Create",
            "ResponseURL": url,
            "ResourceProperties": {handler.NAME_PROPERTY: NAME},
        },
        LambdaContext(),
        RefusingSsm(),
    )
    reply = json.loads(bodies[-1])
    assert reply["Status"] == "FAILED"
    assert "AccessDeniedException" in reply["Reason"]
    assert reply["PhysicalResourceId"] == handler.NOT_CREATED
