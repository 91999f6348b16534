"""The custom resource that creates the ECS service-linked role in a new account."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from relion_spot.service_roles import handler


class FakeIam:
    def __init__(self, error: dict[str, str] | None = None) -> None:
        self.error = error
        self.created: list[str] = []

    def create_service_linked_role(self, AWSServiceName: str) -> dict[str, Any]:
        if self.error:
            raise ClientError({"Error": self.error}, "CreateServiceLinkedRole")
        self.created.append(AWSServiceName)
        return {}


@pytest.fixture
def replies(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    def reply(event, context, status, physical_id, reason="", data=None) -> None:
        sent.append({"status": status, "id": physical_id, "reason": reason, "data": data})

    monkeypatch.setattr(handler, "reply", reply)
    monkeypatch.setattr(handler, "SETTLE_SECONDS", 0.0)
    return sent


def event(request_type: str) -> dict[str, Any]:
    return {
        "RequestType": request_type,
        "ResourceProperties": {handler.SERVICE_PROPERTY: "ecs.amazonaws.com"},
        "ResponseURL": "http://unused",
    }


def test_creates_the_role_when_the_account_has_none(replies) -> None:
    iam = FakeIam()
    handler.on_event(event("Create"), None, iam)
    assert iam.created == ["ecs.amazonaws.com"]
    assert replies == [
        {
            "status": "SUCCESS",
            "id": "service-linked-role-ecs.amazonaws.com",
            "reason": "",
            "data": {"Outcome": "created"},
        }
    ]


def test_a_role_that_exists_is_success(replies) -> None:
    taken = {
        "Code": "InvalidInput",
        "Message": "Service role name AWSServiceRoleForECS has been taken in this account, "
        "please try a different suffix.",
    }
    handler.on_event(event("Create"), None, FakeIam(taken))
    assert [r["status"] for r in replies] == ["SUCCESS"]
    assert replies[0]["data"] == {"Outcome": "existed"}


def test_any_other_refusal_fails_the_stack_with_its_reason(replies) -> None:
    denied = {"Code": "AccessDenied", "Message": "not authorized"}
    handler.on_event(event("Create"), None, FakeIam(denied))
    assert [r["status"] for r in replies] == ["FAILED"]
    assert "AccessDenied" in replies[0]["reason"]


def test_delete_leaves_the_role(replies) -> None:
    iam = FakeIam()
    handler.on_event({**event("Delete"), "PhysicalResourceId": "x"}, None, iam)
    assert iam.created == []
    assert [r["status"] for r in replies] == ["SUCCESS"]
