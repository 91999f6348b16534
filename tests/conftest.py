"""Session-wide fixtures: fake AWS credentials, and CDK synths shared by every template test."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("CDK_DISABLE_CLI_TELEMETRY", "true")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@pytest.fixture(autouse=True)
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may ever sign a request with real credentials or reach a real endpoint."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(autouse=True)
def no_log_handler_outlives_its_test() -> Iterator[None]:
    """Programs under test (power-save, spot watcher, drainer) attach stderr and file handlers to
    the root logger; left there, they write to pytest's closed capture of that test and any
    later log line, from any thread, ends in "Logging error: I/O operation on closed file"."""
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def cdk_json_context() -> dict[str, object]:
    """The context the CDK CLI passes (feature flags): tests must synth what `cdk` synths."""
    return dict(json.loads((REPO_ROOT / "cdk.json").read_text())["context"])


@dataclass
class Synth:
    outdir: Path
    stacks: dict[str, object]

    def template(self, stack_name: str) -> dict:
        return json.loads((self.outdir / f"{stack_name}.template.json").read_text())

    def template_names(self) -> list[str]:
        return sorted(
            p.name.removesuffix(".template.json") for p in self.outdir.glob("*.template.json")
        )


_SYNTHS: dict[str, Synth] = {}


def synth_app(context: dict[str, object], outdir: Path) -> Synth:
    """Synthesize the real app (settings -> stacks -> cdk-nag) with cdk.json's context."""
    from aws_cdk import App

    from relion_spot.deployment import build
    from relion_spot.settings import from_context

    full_context = {**cdk_json_context(), **context}
    app = App(context=full_context, outdir=str(outdir))
    stacks = build(app, from_context({k: v for k, v in full_context.items()}))
    app.synth()
    return Synth(outdir=outdir, stacks=stacks)


@pytest.fixture(scope="session")
def synth_factory(tmp_path_factory: pytest.TempPathFactory):
    """Synth once per distinct context per test session."""

    def make(**context: object) -> Synth:
        key = json.dumps(context, sort_keys=True)
        if key not in _SYNTHS:
            _SYNTHS[key] = synth_app(dict(context), tmp_path_factory.mktemp("cdk.out"))
        return _SYNTHS[key]

    return make


@pytest.fixture(scope="session")
def default_synth(synth_factory) -> Synth:
    """The widest default deployment: 1-, 4- and 8-GPU clusters side by side, with the optional
    dashboards on so their tests see them."""
    return synth_factory(gpus="1,4,8", dashboard="true")


@pytest.fixture(scope="session")
def plain_default_synth(synth_factory) -> Synth:
    """Exactly what `cdk deploy` makes with no settings at all."""
    return synth_factory()


@pytest.fixture(scope="session")
def alternate_synth(synth_factory) -> Synth:
    """Every non-default branch of the settings at once."""
    return synth_factory(
        gpus="4",
        egress="nat-instance",
        keep_data="false",
        controller_capacity="on-demand",
        dashboard="false",
        stage_buckets="lab-b-raw,lab-b.archive",
        efs_throughput="bursting",
        name="lab-b",
    )


@pytest.fixture(scope="session")
def nat_gateway_synth(synth_factory) -> Synth:
    return synth_factory(egress="nat-gateway", name="lab-c")


@pytest.fixture
def moto_aws() -> Iterator[None]:
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``containers`` every test that runs containers (the Slurm images, the embedded cloud,
    real RELION), before ``-m`` selects: scripts/test.sh runs those one after another in one
    process and everything else in a second process beside it, so no container test races
    another's images, networks or cores."""
    for item in items:
        marked = any(item.get_closest_marker(m) is not None for m in ("docker", "relion"))
        if marked or "slurm_images" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.containers)


SKIPS_ALLOWED_ENV = "RELION_SPOT_ALLOW_SKIPS"
"""Set (to anything) for a partial local run; the suite as the README and CI run it never skips."""


def _skipped(config: pytest.Config) -> int:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return len(reporter.stats.get("skipped", [])) if reporter is not None else 0


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _skipped(config) and not os.environ.get(SKIPS_ALLOWED_ENV):
        terminalreporter.write_line(
            f"relion-spot: {_skipped(config)} test(s) skipped: a skip is a check that did not run; "
            f"install what it names (scripts/test.sh does) or set {SKIPS_ALLOWED_ENV}=1",
            red=True,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == 0 and _skipped(session.config) and not os.environ.get(SKIPS_ALLOWED_ENV):
        session.exitstatus = 1
