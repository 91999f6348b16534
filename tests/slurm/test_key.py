"""The auth/slurm key: from Secrets Manager (moto) or a mounted file, written owner-only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import boto3
import pytest

from relion_spot.slurm import key


@pytest.fixture
def secrets(moto_aws: None):
    return boto3.client("secretsmanager", region_name="us-east-1")


def test_key_from_secret_string(secrets) -> None:
    value = "k" * 64
    arn = secrets.create_secret(Name="relion-spot/slurm-key", SecretString=value)["ARN"]
    assert key.load_key({key.KEY_SECRET_ARN_ENV: arn}) == value.encode()


def test_key_from_secret_binary(secrets) -> None:
    value = os.urandom(48)
    arn = secrets.create_secret(Name="relion-spot/slurm-key-bin", SecretBinary=value)["ARN"]
    assert key.load_key({key.KEY_SECRET_ARN_ENV: arn}) == value


def test_missing_secret_names_the_arn_and_the_error(secrets) -> None:
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-AbCdEf"
    with pytest.raises(key.SlurmKeyError, match=r"nope-AbCdEf.*ResourceNotFoundException"):
        key.load_key({key.KEY_SECRET_ARN_ENV: arn})


def test_short_key_is_refused(secrets, tmp_path: Path) -> None:
    arn = secrets.create_secret(Name="short", SecretString="too-short")["ARN"]
    with pytest.raises(key.SlurmKeyError, match=r"has 9 bytes; need 32"):
        key.load_key({key.KEY_SECRET_ARN_ENV: arn})


def test_key_from_file(tmp_path: Path) -> None:
    path = tmp_path / "slurm.key"
    path.write_bytes(b"x" * 40)
    assert key.load_key({key.KEY_FILE_ENV: str(path)}) == b"x" * 40


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no Slurm key: set RELION_SPOT_SLURM_KEY_SECRET_ARN"),
        ({key.KEY_FILE_ENV: "/nonexistent/slurm.key"}, "cannot read it"),
        ({key.KEY_FILE_ENV: "/a", key.KEY_SECRET_ARN_ENV: "arn:b"}, "only one of"),
        ({key.KEY_SECRET_ARN_ENV: "relion-spot/slurm-key"}, "is not a Secrets Manager secret ARN"),
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


def test_secret_is_read_in_its_own_region(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """No default region in the container (or a different one) must not matter."""
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    client = boto3.client("secretsmanager", region_name="eu-west-1")
    arn = client.create_secret(Name="k", SecretString="z" * 40)["ARN"]
    assert key.load_key({key.KEY_SECRET_ARN_ENV: arn}) == b"z" * 40
