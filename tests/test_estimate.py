"""Idle-cost estimate from the real templates, checked against the dated price table."""

from __future__ import annotations

import io
from argparse import Namespace

import pytest

from relion_spot.estimate import cli
from relion_spot.estimate.idle import (
    FREE_CUSTOM_RESOURCES,
    ITEMIZED_CUSTOM_RESOURCES,
    UnpricedResource,
    estimate_templates,
    load_prices,
    read_cloud_assembly,
)

PRICES = load_prices()
HOURS = PRICES["hours_per_month"]


def _fargate_month(market: str, vcpu: float, gb: float, public_ip: bool) -> float:
    rate = PRICES["fargate"][market]
    hourly = vcpu * rate["vcpu_hour"] + gb * rate["gb_hour"]
    return (hourly + (PRICES["public_ipv4_hour"] if public_ip else 0)) * HOURS


def test_default_deployment_prices_every_standing_resource(default_synth) -> None:
    estimate = estimate_templates(read_cloud_assembly(default_synth.outdir))
    controller = _fargate_month("spot", 0.25, 1.0, public_ip=True)
    standing = PRICES["dashboard_month"]
    per_cluster_up = controller + standing + PRICES["cloud_map_instance_month"]
    for stack in ("relion-spot-gpu1", "relion-spot-gpu4", "relion-spot-gpu8"):
        assert estimate.total(controller_up=True, stack=stack) == pytest.approx(per_cluster_up)
        assert estimate.total(controller_up=False, stack=stack) == pytest.approx(standing)
        dashboards = [i for i in estimate.items if i.stack == stack and "dashboard" in i.what]
        assert len(dashboards) == 1, "one dashboard per cluster, priced with no free tier"
        assert dashboards[0].usd_month_controller_asleep == PRICES["dashboard_month"] == 3.00
    assert estimate.total(controller_up=True, stack="relion-spot-network") == pytest.approx(
        PRICES["private_hosted_zone_month"]
    )
    assert estimate.total(controller_up=True, stack="relion-spot-storage") == 0


def test_a_default_cluster_asleep_bills_nothing(plain_default_synth) -> None:
    """No settings: no dashboard, the controller scaled to zero, no alarm standing (the drainer
    tells the topic of a dead-lettered message; the drill checks before it starts), the Slurm
    key a free SecureString. Per cluster, nothing stands: $0.00; the deployment adds only the
    network's private DNS zone, $0.50."""
    estimate = estimate_templates(read_cloud_assembly(plain_default_synth.outdir))
    asleep = [i for i in estimate.items if i.usd_month_controller_asleep > 0]
    per_cluster = [i for i in asleep if i.stack == "relion-spot-gpu1"]
    assert per_cluster == []
    assert estimate.total(controller_up=False, stack="relion-spot-gpu1") == 0.0
    rest = [i for i in asleep if i.stack != "relion-spot-gpu1"]
    assert [(i.stack, i.what) for i in rest] == [
        ("relion-spot-network", "Route 53 private hosted zone (Cloud Map)")
    ]
    assert sum(i.usd_month_controller_asleep for i in rest) == pytest.approx(0.50)
    assert estimate.total(controller_up=False) == pytest.approx(0.50), "the whole deployment"
    assert not [i for i in estimate.items if "dashboard" in i.what]
    (key,) = [i for i in estimate.items if i.stack == "relion-spot-gpu1" and "key" in i.what]
    assert key.what == "Slurm key (SSM SecureString, Standard tier)"
    assert (key.usd_month_controller_up, key.usd_month_controller_asleep) == (0.0, 0.0)


def test_nat_modes_carry_their_standing_cost(alternate_synth, nat_gateway_synth) -> None:
    nat_instance = estimate_templates(read_cloud_assembly(alternate_synth.outdir))
    expected = (
        (PRICES["ec2_hour"]["t4g.nano"] + PRICES["public_ipv4_hour"]) * HOURS
        + PRICES["ebs_gp3_gb_month"] * PRICES["nat_instance_root_gb"]
        + PRICES["private_hosted_zone_month"]
    )
    assert nat_instance.total(controller_up=False, stack="lab-b-network") == pytest.approx(expected)
    on_demand_private = _fargate_month("on-demand", 0.25, 1.0, public_ip=False)
    assert nat_instance.total(controller_up=True, stack="lab-b-gpu4") == pytest.approx(
        on_demand_private + PRICES["cloud_map_instance_month"]
    ), "dashboard=false: no dashboard"
    assert nat_instance.total(controller_up=False, stack="lab-b-gpu4") == 0.0
    nat_gateway = estimate_templates(read_cloud_assembly(nat_gateway_synth.outdir))
    assert nat_gateway.total(controller_up=False, stack="lab-c-network") == pytest.approx(
        (PRICES["nat_gateway_hour"] + PRICES["public_ipv4_hour"]) * HOURS  # gateway + its EIP
        + PRICES["private_hosted_zone_month"]
    )


@pytest.mark.parametrize("kind", ["AWS::RDS::DBInstance", "Custom::Anything"])
def test_an_unknown_resource_type_is_refused_not_counted_free(kind: str) -> None:
    """A custom resource too: its function may make something that bills every month."""
    template = {"Resources": {"Db": {"Type": kind, "Properties": {}}}}
    with pytest.raises(UnpricedResource, match=kind):
        estimate_templates({"s": template})


def test_every_free_custom_resource_says_why() -> None:
    for kind, reason in FREE_CUSTOM_RESOURCES.items():
        assert kind.startswith("Custom::") and len(reason) > 20, kind
    assert set(ITEMIZED_CUSTOM_RESOURCES) <= set(FREE_CUSTOM_RESOURCES)


def test_report_prints_per_cluster_figures(default_synth) -> None:
    out = io.StringIO()
    assert cli.run(Namespace(cdk_out=default_synth.outdir, context=[], only="idle"), out=out) == 0
    text = out.getvalue()
    assert "cluster relion-spot-gpu1: $" in text
    assert "scaled to zero" in text


def test_report_refuses_a_directory_that_is_not_a_synth(tmp_path, capsys) -> None:
    assert cli.run(Namespace(cdk_out=tmp_path, context=[], only="idle")) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "manifest.json" in err
