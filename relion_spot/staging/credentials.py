"""An S3 client whose credentials come from the node's broker (relion_spot.node.stage_credentials).

A staging job runs as the job user, which the node keeps away from the instance's credentials;
the broker, root beside slurmd, hands this job the stage-read role's session over a Unix socket
instead. These credentials are the client's only source: when the broker refuses or is absent
the transfer fails with the broker's reason rather than looking anywhere else. The socket's
server must be root (the kernel says who it is), so nothing a job planted can answer instead.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import StagingError
from .prefix import CONNECTIONS

TIMEOUT_S = 60.0
MAX_REPLY_BYTES = 64 * 1024
RETRY_PATIENCE_S = 120.0
"""How long a refusal that time may cure is asked again (a job can start a moment before the
drainer has written its acceptance)."""


def _ask_once(path: Path, server_uid: int) -> dict[str, Any]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(TIMEOUT_S)
            connection.connect(str(path))
            raw = connection.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
            )
            _pid, uid, _gid = struct.unpack("3i", raw)
            if uid != server_uid:
                raise StagingError(f"{path} is served by uid {uid}, not the node's broker")
            received = b""
            while chunk := connection.recv(4096):
                received += chunk
                if len(received) > MAX_REPLY_BYTES:
                    raise StagingError(f"{path}: the credential broker's answer is too long")
    except (FileNotFoundError, ConnectionRefusedError):
        raise StagingError(
            f"no S3 credential broker at {path}: this node reads no S3 buckets "
            "(deploy with -c stage_buckets=<bucket> to stage from s3://)"
        ) from None
    except OSError as err:
        raise StagingError(f"{path}: the credential broker did not answer ({err})") from None
    try:
        reply = json.loads(received)
    except ValueError:
        raise StagingError(f"{path}: the credential broker answered no JSON") from None
    if not isinstance(reply, dict):
        raise StagingError(f"{path}: the credential broker answered no JSON object")
    return reply


def ask_broker(
    path: Path,
    *,
    server_uid: int = 0,
    patience_s: float = RETRY_PATIENCE_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """The broker's answer for this process: credentials in the credential_process shape. A
    refusal that time may cure (the intake's decision not yet written) is asked again, for up
    to ``patience_s``; any other refusal ends the transfer with the broker's reason."""
    deadline, wait = clock() + patience_s, 1.0
    while True:
        reply = _ask_once(path, server_uid)
        if "Error" not in reply:
            break
        if not reply.get("Retry") or clock() + wait > deadline:
            raise StagingError(f"the node's S3 credential broker: {reply['Error']}")
        sleep(wait)
        wait = min(wait * 2, 15.0)
    missing = [
        k
        for k in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
        if not isinstance(reply.get(k), str)
    ]
    if missing:
        raise StagingError(f"{path}: the credential broker's answer lacks {', '.join(missing)}")
    return reply


def _metadata(ask: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, str]]:
    def refresh() -> dict[str, str]:
        reply = ask()
        return {
            "access_key": reply["AccessKeyId"],
            "secret_key": reply["SecretAccessKey"],
            "token": reply["SessionToken"],
            "expiry_time": reply["Expiration"],
        }

    return refresh


def s3_client_from_broker(path: Path) -> Any:
    """An S3 client that asks the broker at ``path`` for credentials, and again before they
    expire (botocore refreshes them); its region is the one the broker names."""
    return broker_session(path)[0]


def broker_session(path: Path) -> tuple[Any, dict[str, Any]]:
    """``s3_client_from_broker``'s client and the broker's first answer (which, for an export,
    names the bucket and prefix the session may write)."""
    import boto3
    import botocore.session
    from botocore.config import Config
    from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials

    first = ask_broker(path)
    refresh = _metadata(lambda: ask_broker(path))

    class BrokerProvider(CredentialProvider):
        METHOD = "relion-spot-stage-broker"
        CANONICAL_NAME = "relion-spot-stage-broker"

        def load(self) -> RefreshableCredentials:
            return RefreshableCredentials.create_from_metadata(
                metadata=_metadata(lambda: first)(), refresh_using=refresh, method=self.METHOD
            )

    core = botocore.session.get_session()
    core.register_component("credential_provider", CredentialResolver([BrokerProvider()]))
    region = first.get("Region") if isinstance(first.get("Region"), str) else None
    # A pool for a data set's parallel copy (relion_spot.staging.prefix); other uses take one.
    pool = Config(max_pool_connections=CONNECTIONS)
    return boto3.Session(botocore_session=core, region_name=region).client("s3", config=pool), first
