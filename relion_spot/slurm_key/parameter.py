"""Make, keep and remove one cluster's Slurm key parameter (the SSM client is passed in)."""

from __future__ import annotations

import os
import re
from typing import Any

from botocore.exceptions import ClientError

KEY_RANDOM_BYTES = 32
"""Random bytes in a new key; stored as hex, so the key Slurm reads is twice as long (64 bytes,
well over the 32 relion_spot.slurm.key requires)."""
TIER = "Standard"
"""Free; an Advanced parameter bills $0.05 a month."""
_NAME = re.compile(r"^/relion-spot/([a-z][a-z0-9-]{0,62})/slurm-key$")

CREATED = "created"
KEPT = "kept"
DELETED = "deleted"
ABSENT = "absent"


def parameter_name(cluster_name: str) -> str:
    """Where cluster ``cluster_name`` keeps its key."""
    name = f"/relion-spot/{cluster_name}/slurm-key"
    if not is_key_parameter(name):
        raise ValueError(f"{cluster_name!r} cannot name a Slurm key parameter")
    return name


def is_key_parameter(name: str) -> bool:
    """Whether ``name`` is a cluster's key parameter: the only names this module touches."""
    return bool(_NAME.fullmatch(name))


def new_key() -> str:
    return os.urandom(KEY_RANDOM_BYTES).hex()


def ensure(ssm: Any, name: str) -> str:
    """Store a new key at ``name`` unless one is there already: ``CREATED`` or ``KEPT``.

    Never overwrites: slurmctld and every running node hold the key they started with, and a
    new one would leave them unable to trust each other. A parameter already there (left by an
    earlier stack of the same cluster name, or a retried request) is kept as it is.
    """
    _check(name)
    try:
        ssm.put_parameter(
            Name=name,
            Description="Slurm auth/slurm key of one relion-spot cluster (made by its stack)",
            Value=new_key(),
            Type="SecureString",
            Tier=TIER,
            Overwrite=False,
        )
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "ParameterAlreadyExists":
            return KEPT
        raise
    return CREATED


def delete(ssm: Any, name: str) -> str:
    """Remove the key at ``name``: ``DELETED``, or ``ABSENT`` when there was none."""
    _check(name)
    try:
        ssm.delete_parameter(Name=name)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return ABSENT
        raise
    return DELETED


def _check(name: str) -> None:
    if not is_key_parameter(name):
        raise ValueError(
            f"{name!r} is not a Slurm key parameter (/relion-spot/<cluster>/slurm-key)"
        )
