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


def test_each_acknowledgement_matches_a_finding_on_its_own_resource(monkeypatch, tmp_path) -> None:
    """One synth with every acknowledgement recorded instead of made: synth then fails, and its
    report's findings, by resource and rule (with the finding's detail, such as IAM5's resource),
    are exactly the acknowledged ones. So each acknowledgement is still needed, on the resource
    it names, and none is broader than its finding."""
    import relion_spot.nag_acknowledgements as nag

    made: set[tuple[str, str]] = set()

    def record(construct, rule: str, reason: str) -> None:
        assert construct is not None, f"acknowledgement of {rule} names no resource"
        assert reason.strip(), f"acknowledgement of {rule} carries no reason"
        made.add((construct.node.path, rule))

    monkeypatch.setattr(nag, "_ack", record)
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        # Every branch of the acknowledgements: the NAT instance's and the staging buckets'.
        synth_app(
            {"egress": "nat-instance", "stage_buckets": "lab-raw,lab.archive", "name": "nag-probe"},
            tmp_path,
        )
    report = json.loads((tmp_path / "validation-report.json").read_text())
    found = {
        (construct["constructPath"], violation["ruleName"])
        for plugin in report["pluginReports"]
        for violation in plugin["violations"]
        for construct in violation["violatingConstructs"]
    }
    assert {rule for _, rule in made if ":s3:::lab" in rule} == {
        "AwsSolutions-IAM5[Resource::arn:aws:s3:::lab-raw/*]",
        "AwsSolutions-IAM5[Resource::arn:aws:s3:::lab.archive/*]",
    }
    assert sorted(made - found) == [], "acknowledged, but no such finding on that resource"
    assert sorted(found - made) == [], "found, and not acknowledged on that resource"


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
