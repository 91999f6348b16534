"""The strongest offline judges on the real templates: cdk-nag (AwsSolutions) and cfn-lint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import synth_app

ALLOWED_LINT = {"W3005"}
"""W3005 (redundant DependsOn) comes from CDK's own Lambda constructs, not from this project."""


def test_cdk_nag_reports_no_finding_on_any_stack(
    default_synth, alternate_synth, nat_gateway_synth
) -> None:
    """Synth itself fails on an unacknowledged finding; the report must also be clean.

    A clean run writes no plugin entries at all, so this alone could pass with the plugin
    missing; the next test proves the plugin is wired in by removing the acknowledgements.
    """
    for synth in (default_synth, alternate_synth, nat_gateway_synth):
        report = json.loads((synth.outdir / "validation-report.json").read_text())
        for plugin in report["pluginReports"]:
            assert plugin["conclusion"] == "success", plugin
            assert plugin["violations"] == [], plugin


def test_every_acknowledgement_is_still_needed(monkeypatch, tmp_path) -> None:
    """Without the acknowledgements synth fails, on exactly the rules they acknowledge."""
    import relion_spot.deployment as deployment

    monkeypatch.setattr(deployment, "acknowledge_findings", lambda stacks: None)
    with pytest.raises(RuntimeError, match="ValidationFailed") as caught:
        synth_app({"egress": "nat-instance", "name": "nag-probe"}, tmp_path)
    message = str(caught.value)
    for rule in (
        "AwsSolutions-ECS4",
        "AwsSolutions-ECS2",
        "AwsSolutions-IAM5",
        "AwsSolutions-EC26",
        "AwsSolutions-EC28",
        "AwsSolutions-EC29",
        "AwsSolutions-S1",
    ):
        assert rule in message


def test_cfn_lint_finds_nothing(default_synth, alternate_synth, nat_gateway_synth) -> None:
    templates = [
        str(synth.outdir / f"{name}.template.json")
        for synth in (default_synth, alternate_synth, nat_gateway_synth)
        for name in synth.template_names()
    ]
    # cfn-lint 1.x has no ``python -m cfnlint``: run its console entry point's main.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cfnlint.runner import main; sys.exit(main())",
            "--format",
            "json",
            "--",
            *templates,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.stdout.strip().startswith("["), f"cfn-lint did not run: {result.stderr[-2000:]}"
    findings = json.loads(result.stdout)
    unexpected = [f for f in findings if f["Rule"]["Id"] not in ALLOWED_LINT]
    assert unexpected == [], json.dumps(unexpected, indent=1)[:4000]
    assert len(templates) == 5 + 3 + 3
