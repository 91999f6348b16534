"""The auth/slurm key: fetched at container start, never part of the image.

In the cloud the key is an SSM Parameter Store SecureString (its ARN in ``KEY_PARAMETER_ARN_ENV``;
made by the cluster stack, see relion_spot.slurm_key); locally it is a file mounted into the
container (``KEY_FILE_ENV``). The parameter is read with plain boto3, so it honours
AWS_ENDPOINT_URL and runs unchanged against moto.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

KEY_PARAMETER_ARN_ENV = "RELION_SPOT_SLURM_KEY_PARAMETER_ARN"
KEY_FILE_ENV = "RELION_SPOT_SLURM_KEY_FILE"
KEY_PATH = Path("/etc/slurm/slurm.key")
"""Where auth/slurm looks for the key by default (slurmctld, slurmd)."""
MIN_KEY_BYTES = 32
"""HS256 wants a key at least as long as its 256-bit output."""


class SlurmKeyError(RuntimeError):
    """The key cannot be had; the message says from where and why."""


def load_key(env: Mapping[str, str] = os.environ) -> bytes:
    """The key's bytes from the parameter or file that ``env`` names."""
    arn = env.get(KEY_PARAMETER_ARN_ENV, "").strip()
    path = env.get(KEY_FILE_ENV, "").strip()
    if arn and path:
        raise SlurmKeyError(f"set only one of {KEY_PARAMETER_ARN_ENV} and {KEY_FILE_ENV}, not both")
    if arn:
        key = _from_parameter(arn)
        source = f"parameter {arn}"
    elif path:
        try:
            key = Path(path).read_bytes()
        except OSError as err:
            raise SlurmKeyError(
                f"{KEY_FILE_ENV} = {path!r}: cannot read it ({err.strerror})"
            ) from None
        source = f"file {path}"
    else:
        raise SlurmKeyError(
            f"no Slurm key: set {KEY_PARAMETER_ARN_ENV} (an SSM parameter ARN) "
            f"or {KEY_FILE_ENV} (a file mounted into the container)"
        )
    if len(key) < MIN_KEY_BYTES:
        raise SlurmKeyError(
            f"the key from {source} has {len(key)} bytes; need {MIN_KEY_BYTES} or more"
        )
    return key


def _from_parameter(arn: str) -> bytes:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    parts = arn.split(":", 5)
    if (
        len(parts) != 6
        or parts[0] != "arn"
        or parts[2] != "ssm"
        or not parts[3]
        or not parts[5].startswith("parameter/")
    ):
        raise SlurmKeyError(
            f"{KEY_PARAMETER_ARN_ENV} = {arn!r} is not an SSM parameter ARN "
            "(arn:<partition>:ssm:<region>:<account>:parameter/<name>)"
        )
    try:
        # The parameter's own region, whatever the container's default region is (or is not).
        client = boto3.client("ssm", region_name=parts[3])
        value = client.get_parameter(Name=arn, WithDecryption=True)
    except ClientError as err:
        error = err.response.get("Error", {})
        raise SlurmKeyError(
            f"{KEY_PARAMETER_ARN_ENV} = {arn!r}: {error.get('Code')}: {error.get('Message')}"
        ) from None
    except BotoCoreError as err:
        raise SlurmKeyError(f"{KEY_PARAMETER_ARN_ENV} = {arn!r}: {err}") from None
    return str(value.get("Parameter", {}).get("Value", "")).encode()


def install_key(key: bytes, *, path: Path = KEY_PATH, uid: int, gid: int) -> None:
    """Write the key readable by its owner only (Slurm refuses a key others can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key)
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
