"""The auth/slurm key: from Parameter Store (moto) or a mounted file, written owner-only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import boto3
import pytest

from relion_spot.slurm import key


@pytest.fixture
def ssm(moto_aws: None):
    return boto3.client("ssm", region_name="us-east-1")


def _secure_string(ssm, name: str, value: str) -> str:
    ssm.put_parameter(Name=name, Value=value, Type="SecureString", Tier="Standard")
    return ssm.get_parameter(Name=name)["Parameter"]["ARN"]


def test_key_from_a_secure_string_parameter(ssm) -> None:
    value = os.urandom(32).hex()
    arn = _secure_string(ssm, "/relion-spot/lab-gpu1/slurm-key", value)
    assert key.load_key({key.KEY_PARAMETER_ARN_ENV: arn}) == value.encode()


def test_missing_parameter_names_the_arn_and_the_error(ssm) -> None:
    arn = "arn:aws:ssm:us-east-1:123456789012:parameter/relion-spot/nope/slurm-key"
    with pytest.raises(key.SlurmKeyError, match=r"nope/slurm-key.*ParameterNotFound"):
        key.load_key({key.KEY_PARAMETER_ARN_ENV: arn})


def test_short_key_is_refused(ssm, tmp_path: Path) -> None:
    arn = _secure_string(ssm, "/relion-spot/short/slurm-key", "too-short")
    with pytest.raises(key.SlurmKeyError, match=r"has 9 bytes; need 32"):
        key.load_key({key.KEY_PARAMETER_ARN_ENV: arn})


def test_the_key_the_stack_makes_is_long_enough(ssm) -> None:
    """What the cluster's custom resource stores (relion_spot.slurm_key) is a key Slurm takes."""
    from relion_spot.slurm_key.parameter import ensure, parameter_name

    name = parameter_name("lab-gpu1")
    ensure(ssm, name)
    arn = ssm.get_parameter(Name=name)["Parameter"]["ARN"]
    assert len(key.load_key({key.KEY_PARAMETER_ARN_ENV: arn})) >= key.MIN_KEY_BYTES


def test_key_from_file(tmp_path: Path) -> None:
    path = tmp_path / "slurm.key"
    path.write_bytes(b"x" * 40)
    assert key.load_key({key.KEY_FILE_ENV: str(path)}) == b"x" * 40


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no Slurm key: set RELION_SPOT_SLURM_KEY_PARAMETER_ARN"),
        ({key.KEY_FILE_ENV: "/nonexistent/slurm.key"}, "cannot read it"),
        ({key.KEY_FILE_ENV: "/a", key.KEY_PARAMETER_ARN_ENV: "arn:b"}, "only one of"),
        ({key.KEY_PARAMETER_ARN_ENV: "/relion-spot/lab-gpu1/slurm-key"}, "is not an SSM parameter"),
        (
            {key.KEY_PARAMETER_ARN_ENV: "arn:aws:secretsmanager:us-east-1:1:secret:k-AbCdEf"},
            "is not an SSM parameter ARN",
        ),
    ],
)
def test_bad_key_sources_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(key.SlurmKeyError, match=message):
        key.load_key(env)


def test_installed_key_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "slurm.key"
    path.parent.mkdir()
    path.write_bytes(b"old")
    path.chmod(0o644)
    key.install_key(b"y" * 32, path=path, uid=os.getuid(), gid=os.getgid())
    assert path.read_bytes() == b"y" * 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_parameter_is_read_in_its_own_region(
    moto_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No default region in the container (or a different one) must not matter."""
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    arn = _secure_string(boto3.client("ssm", region_name="eu-west-1"), "/k", "z" * 40)
    assert ":eu-west-1:" in arn
    assert key.load_key({key.KEY_PARAMETER_ARN_ENV: arn}) == b"z" * 40
