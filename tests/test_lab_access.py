"""The lab's two managed policies, the admin role and how the drainer learns it, in the
synthesized templates (what each policy allows is simulated in tests/iam)."""

from __future__ import annotations

import pytest

from relion_spot.intake.config import ADMIN_IDS_ENV

CLUSTERS = ["relion-spot-gpu1", "relion-spot-gpu4", "relion-spot-gpu8"]


def _resources(template: dict, kind: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _one(template: dict, kind: str, prefix: str) -> str:
    (found,) = [k for k in _resources(template, kind) if k.startswith(prefix)]
    return found


@pytest.mark.parametrize("stack", CLUSTERS)
def test_member_and_admin_policies_are_attached_and_output(default_synth, stack: str) -> None:
    raw = default_synth.template(stack)
    policies = _resources(raw, "AWS::IAM::ManagedPolicy")
    member = _one(raw, "AWS::IAM::ManagedPolicy", "LabAccessLabMember")
    admin = _one(raw, "AWS::IAM::ManagedPolicy", "LabAccessLabAdmin")
    role = _one(raw, "AWS::IAM::Role", "LabAccessAdminRole")
    users = _one(raw, "AWS::IAM::Group", "Users")
    admins = _one(raw, "AWS::IAM::Group", "LabAccessAdmins")
    groups = policies[member]["Properties"]["Groups"]
    assert sorted(g["Ref"] for g in groups) == sorted([users, admins])
    assert "Roles" not in policies[member]["Properties"]
    assert policies[admin]["Properties"]["Roles"] == [{"Ref": role}]
    assert "Groups" not in policies[admin]["Properties"]
    outputs = {k: v["Value"] for k, v in raw["Outputs"].items()}
    assert outputs["LabMemberPolicyArn"] == {"Ref": member}
    assert outputs["LabAdminPolicyArn"] == {"Ref": admin}
    assert outputs["AdminRoleArn"] == {"Fn::GetAtt": [role, "Arn"]}
    assert outputs["AdminsGroup"] == {"Ref": admins}
    assert outputs["UsersGroup"] == {"Ref": users}


@pytest.mark.parametrize("stack", CLUSTERS)
def test_the_admin_policy_is_the_member_policy_and_more(default_synth, stack: str) -> None:
    raw = default_synth.template(stack)
    policies = _resources(raw, "AWS::IAM::ManagedPolicy")

    def statements(prefix: str) -> list[dict]:
        found = policies[_one(raw, "AWS::IAM::ManagedPolicy", prefix)]
        return list(found["Properties"]["PolicyDocument"]["Statement"])

    member, admin = statements("LabAccessLabMember"), statements("LabAccessLabAdmin")
    assert admin[: len(member)] == member
    assert {s["Sid"] for s in admin[len(member) :]} == {
        "ClearDeadLetters",
        "ReadControllerLogGroup",
        "ReadControllerLogStreams",
    }
    assert all(s["Effect"] == "Allow" for s in admin)


@pytest.mark.parametrize("stack", CLUSTERS)
def test_the_drainer_knows_the_admin_role_by_its_unique_id(default_synth, stack: str) -> None:
    """SQS's SenderId names a role by its unique id (AROA...), not its ARN."""
    raw = default_synth.template(stack)
    role = _one(raw, "AWS::IAM::Role", "LabAccessAdminRole")
    (task,) = _resources(raw, "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env[ADMIN_IDS_ENV] == {"Fn::GetAtt": [role, "RoleId"]}
    trust = raw["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    (statement,) = trust
    assert statement["Action"] == "sts:AssumeRole"
    principal = statement["Principal"]["AWS"]["Fn::Join"][1]
    assert principal[-1] == ":root", "assumed only where the account's own policies allow it"
