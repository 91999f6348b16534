"""The spot interruption drill (AWS FIS) each cluster stack carries for ``relion-spot selftest
--interrupt``: the experiment, its scope, its stop condition and its role, on the default synth.
What the role and the users group may do is the IAM matrix's (tests/iam)."""

from __future__ import annotations

from typing import Any

import pytest

from relion_spot import tags
from relion_spot.estimate.idle import estimate_templates

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
def test_the_drill_stops_when_the_cluster_runs_other_work(default_synth: Any, stack: str) -> None:
    template = default_synth.template(stack)
    _, experiment = _one(template, "AWS::FIS::ExperimentTemplate")
    (stop,) = experiment["Properties"]["StopConditions"]
    assert stop["Source"] == "aws:cloudwatch:alarm"
    alarm_id = stop["Value"]["Fn::GetAtt"][0]
    alarm = template["Resources"][alarm_id]
    assert alarm["Type"] == "AWS::CloudWatch::Alarm"
    props = alarm["Properties"]
    assert (props["Threshold"], props["ComparisonOperator"]) == (2, "GreaterThanThreshold")
    assert props["TreatMissingData"] == "notBreaching"
    watched = [m["MetricStat"]["Metric"] for m in props["Metrics"] if "MetricStat" in m]
    assert sorted(
        {d["Name"]: d["Value"] for d in m["Dimensions"]}["InstanceType"] for m in watched
    ) == CLUSTERS[stack].split(",")
    for metric in watched:
        dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
        assert (dimensions["Cluster"], dimensions["Market"]) == (stack, "spot")
        assert metric["MetricName"] == "NodesRunning"
    (expression,) = [m for m in props["Metrics"] if "Expression" in m]
    assert expression["Expression"].startswith("SUM(") and expression["ReturnData"] is True


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


def test_the_stop_alarm_is_priced_per_metric_it_watches(default_synth: Any) -> None:
    templates = {name: default_synth.template(name) for name in default_synth.template_names()}
    estimate = estimate_templates(templates)
    (item,) = [
        i
        for i in estimate.items
        if i.stack == "relion-spot-gpu1" and i.resource.startswith("SpotInterruptionDrill")
    ]
    assert item.what == "CloudWatch alarm over 2 metrics"
    assert item.usd_month_controller_up == pytest.approx(2 * estimate.prices["alarm_month"])
