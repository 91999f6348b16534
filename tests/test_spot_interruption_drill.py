"""The spot interruption drill (AWS FIS) each cluster stack carries for ``relion-spot selftest
--interrupt``: the experiment, its scope, its stop condition and its role, on the default synth.
What the role and the users group may do is the IAM matrix's (tests/iam)."""

from __future__ import annotations

from typing import Any

import pytest

from relion_spot import tags

CLUSTERS = {
    "relion-spot-gpu1": "g5.xlarge,g6.xlarge",
    "relion-spot-gpu4": "g5.12xlarge,g6.12xlarge",
}


def _one(template: dict[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    (found,) = [(k, v) for k, v in template["Resources"].items() if v["Type"] == kind]
    return found


@pytest.mark.parametrize("stack", CLUSTERS)
def test_one_interruption_notice_to_one_running_gpu_node_of_this_cluster(
    default_synth: Any, stack: str
) -> None:
    template = default_synth.template(stack)
    _, experiment = _one(template, "AWS::FIS::ExperimentTemplate")
    props = experiment["Properties"]
    ((_, action),) = props["Actions"].items()
    assert action["ActionId"] == "aws:ec2:send-spot-instance-interruptions"
    assert action["Parameters"] == {"durationBeforeInterruption": "PT2M"}
    ((key, target_name),) = action["Targets"].items()
    assert key == "SpotInstances"
    target = props["Targets"][target_name]
    assert target["ResourceType"] == "aws:ec2:spot-instance"
    assert target["SelectionMode"] == "COUNT(1)"
    assert target["ResourceTags"] == {tags.CLUSTER: stack, tags.PARTITION: "gpu"}
    assert target["Filters"] == [{"Path": "State.Name", "Values": ["running"]}]
    assert props["Tags"][tags.CLUSTER] == stack
    assert props["RoleArn"]["Fn::GetAtt"][0].startswith("SpotInterruptionDrillRole")


@pytest.mark.parametrize("stack", CLUSTERS)
def test_the_drill_keeps_no_standing_alarm(default_synth: Any, stack: str) -> None:
    """One notice to one instance ends by itself; the selftest checks before the start that
    only its own GPU node runs (tests/selftest), so nothing bills while the cluster sleeps."""
    template = default_synth.template(stack)
    _, experiment = _one(template, "AWS::FIS::ExperimentTemplate")
    assert experiment["Properties"]["StopConditions"] == [{"Source": "none"}]
    assert not [r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]


def test_fis_assumes_the_role_only_for_this_account(default_synth: Any) -> None:
    template = default_synth.template("relion-spot-gpu1")
    roles = {
        k: v
        for k, v in template["Resources"].items()
        if v["Type"] == "AWS::IAM::Role" and k.startswith("SpotInterruptionDrillRole")
    }
    ((_, role),) = roles.items()
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "fis.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


def test_the_template_id_is_an_output(default_synth: Any) -> None:
    template = default_synth.template("relion-spot-gpu1")
    output = template["Outputs"]["SpotInterruptionTemplateId"]["Value"]
    assert output["Fn::GetAtt"][0].startswith("SpotInterruptionDrillTemplate")
