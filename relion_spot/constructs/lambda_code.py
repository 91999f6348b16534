"""Lambda code assets made from this package's own modules, with no Docker bundling.

A function's handler lives in a subpackage of ``relion_spot`` (tested there like any module). The
asset is a copy of just that subpackage plus the import-light top-level modules it may use, laid
out as ``relion_spot/...`` so the handler imports exactly as it does in the tests.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

PACKAGE_DIR = Path(__file__).resolve().parent.parent
LAMBDA_RUNTIME = lambda_.Runtime.PYTHON_3_14
"""Every function's runtime: the newest, so none falls behind on security fixes."""
SHARED_MODULES = ("__init__.py", "tags.py", "catalog.py", "cfn_reply.py")
"""Top-level modules every function may import; each imports nothing outside the stdlib."""

_staged: dict[tuple[str, ...], Path] = {}


def package_code(*subpackages: str) -> lambda_.Code:
    """Code for a function whose handler is in ``relion_spot.<subpackage>``."""
    return lambda_.Code.from_asset(str(_stage(tuple(sorted(subpackages)))))


def own_function(
    scope: Construct,
    *,
    subpackage: str,
    handler: str,
    role_description: str,
    description: str,
    log_retention: logs.RetentionDays,
    timeout: Duration,
    memory_size: int = 128,
    environment: dict[str, str] | None = None,
) -> tuple[iam.Role, lambda_.Function]:
    """A function of ``relion_spot.<subpackage>`` with a role and a log group of its own, made
    as ``Logs``, ``Role`` and ``Function`` in ``scope`` (stable logical IDs). The role may only
    write that log group; the caller grants the rest."""
    log_group = logs.LogGroup(
        scope, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
    )
    role = iam.Role(
        scope,
        "Role",
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        description=role_description,
    )
    log_group.grant_write(role)
    function = lambda_.Function(
        scope,
        "Function",
        runtime=LAMBDA_RUNTIME,
        code=package_code(subpackage),
        handler=f"relion_spot.{subpackage}.{handler}",
        timeout=timeout,
        memory_size=memory_size,
        role=role,
        log_group=log_group,
        environment=environment,
        description=description,
    )
    return role, function


def _stage(subpackages: tuple[str, ...]) -> Path:
    if subpackages in _staged and _staged[subpackages].exists():
        return _staged[subpackages]
    digest = hashlib.sha256("|".join(subpackages).encode()).hexdigest()[:12]
    root = Path(tempfile.mkdtemp(prefix=f"relion-spot-lambda-{digest}-"))
    target = root / "relion_spot"
    target.mkdir()
    for module in SHARED_MODULES:
        shutil.copy2(PACKAGE_DIR / module, target / module)
    for sub in subpackages:
        source = PACKAGE_DIR / sub
        if not (source / "__init__.py").is_file():
            raise ValueError(f"relion_spot.{sub} is not a package; cannot ship it as Lambda code")
        shutil.copytree(
            source, target / sub, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests")
        )
    _staged[subpackages] = root
    return root
