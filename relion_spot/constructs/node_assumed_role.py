"""Roles only one node role may assume: what the node's root broker hands jobs, narrowed.

Jobs hold no instance credentials, so what a job must reach (a stage bucket, the exchange) rides
on a role of its own that the node's root broker (relion_spot.node.stage_credentials) assumes per
job. The node role that may assume it is made after the user data that names this role, so the
role starts with a placeholder trust (the account); ``trust_only`` replaces it with that node
role as the only principal, and ``NodeRoleGiven`` fails synth if it never is (the account as
principal would let in any principal of the account whose own policy allows sts:AssumeRole).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import jsii
from aws_cdk import aws_iam as iam
from constructs import IValidation

SESSION_HOURS = 1
"""A role chained from the node's instance session lasts an hour at most."""


def trust_only(role: iam.Role, *node_roles: iam.IRole, sid: str) -> None:
    """``node_roles`` alone may assume ``role``; each one's policy gets statement ``sid`` to do
    so."""
    trust = iam.PolicyDocument(
        statements=[
            iam.PolicyStatement(
                actions=["sts:AssumeRole"],
                principals=[iam.ArnPrincipal(node_role.role_arn) for node_role in node_roles],
            )
        ]
    )
    cast(iam.CfnRole, role.node.default_child).assume_role_policy_document = trust
    for node_role in node_roles:
        node_role.add_to_principal_policy(
            iam.PolicyStatement(sid=sid, actions=["sts:AssumeRole"], resources=[role.role_arn])
        )


@jsii.implements(IValidation)
class NodeRoleGiven:
    """Fails synth with ``message`` while ``given()`` is false."""

    def __init__(self, given: Callable[[], bool], message: str) -> None:
        self.given = given
        self.message = message

    def validate(self) -> list[str]:
        return [] if self.given() else [self.message]
