"""Each Lambda's asset is self-contained: its handler imports with only the staged code + boto3."""

from __future__ import annotations

import subprocess
import sys
import sysconfig

import pytest

from relion_spot.constructs.lambda_code import _stage

HANDLERS = {
    "teardown": "relion_spot.teardown.handler",
    "cost": "relion_spot.cost.handler",
    "controller_capacity": "relion_spot.controller_capacity.handler",
    "controller_wake": "relion_spot.controller_wake.handler",
    "slurm_key": "relion_spot.slurm_key.handler",
}


@pytest.mark.parametrize(("subpackage", "module"), HANDLERS.items())
def test_handler_imports_from_its_asset_alone(subpackage: str, module: str) -> None:
    staged = _stage((subpackage,))
    site_packages = sysconfig.get_paths()["purelib"]
    # -S: no site processing, so this project's editable install cannot leak in; boto3 comes
    # from site-packages as it comes from the Lambda runtime.
    code = (
        f"import {module} as m, relion_spot; "
        f"assert relion_spot.__file__.startswith({str(staged)!r}), relion_spot.__file__; "
        "print(m.__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PYTHONPATH": f"{staged}:{site_packages}", "AWS_DEFAULT_REGION": "us-east-1"},
        cwd=staged,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == module
