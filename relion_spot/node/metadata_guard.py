"""Keep jobs away from the instance metadata service, so no job holds the node's credentials.

Whoever reaches IMDS can take the instance role's credentials. Only root on the node needs it
(the spot watcher, the Prolog/Epilog that tag the instance, the job-report forwarder); jobs run
as the job user and must not reach it. One firewall rule by uid does that: every TCP connection
to the metadata address and port from a non-root process is rejected (a reset: the caller sees
"connection refused" at once, no timeout).

Two modes, chosen by ``RELION_SPOT_METADATA_GUARD`` in the node container, both run by the
entrypoint before slurmd starts:

    install   add the rule here (the container has its own network namespace and NET_ADMIN:
              the embedded cloud's node containers, whose metadata service is a local address)
    verify    the rule is the host's (a GPU node's container shares the host network; the node
              bootstrap installs the rule before it starts the container): only check it

Either way the entrypoint then proves it: a process of the job user tries to connect to the
metadata service, and slurmd does not start unless that connection is refused.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass

from .imds import DEFAULT_IMDS_URL

GUARD_ENV = "RELION_SPOT_METADATA_GUARD"
MODES = ("install", "verify")
PROBE_TIMEOUT_SECONDS = 3.0
IPTABLES = "/usr/sbin/iptables"


class GuardError(RuntimeError):
    """The guard could not be put in place or does not hold; the message says which."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """The metadata service's address and port from its base URL (an IP literal: a rule by
        name would be a rule on whatever the name resolves to when the rule is read)."""
        parsed = urllib.parse.urlsplit(url or DEFAULT_IMDS_URL)
        try:
            host = str(ipaddress.ip_address(parsed.hostname or ""))
        except ValueError:
            raise GuardError(
                f"metadata URL {url!r}: the firewall guard needs an IP address as its host, "
                "e.g. http://169.254.169.254"
            ) from None
        if parsed.scheme != "http":
            raise GuardError(f"metadata URL {url!r}: expected http://<address>[:port]")
        return cls(host, parsed.port or 80)


def rule(endpoint: Endpoint) -> list[str]:
    """The OUTPUT-chain rule (without -A/-I/-C): non-root TCP to the endpoint is reset."""
    return [
        "OUTPUT", "-p", "tcp", "-d", endpoint.host, "--dport", str(endpoint.port),
        "-m", "owner", "!", "--uid-owner", "0",
        "-j", "REJECT", "--reject-with", "tcp-reset",
    ]  # fmt: skip


def _iptables(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [IPTABLES, "-w", "5", *args], capture_output=True, text=True, check=False, timeout=30
        )
    except FileNotFoundError:
        raise GuardError(f"{IPTABLES} is missing from this image") from None


def install(endpoint: Endpoint) -> bool:
    """Put the rule first in OUTPUT unless it is there already; True if it was added."""
    if _iptables("-C", *rule(endpoint)).returncode == 0:
        return False
    added = _iptables("-I", rule(endpoint)[0], "1", *rule(endpoint)[1:])
    if added.returncode != 0:
        raise GuardError(
            f"cannot add the metadata firewall rule for {endpoint.host}:{endpoint.port} "
            f"({added.stderr.strip() or added.returncode}); the container needs NET_ADMIN"
        )
    return True


_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except ConnectionRefusedError:
    sys.exit(0)
except OSError as err:
    print(type(err).__name__, file=sys.stderr)
    sys.exit(3)
sys.exit(4)
"""
REFUSED, NO_ANSWER, CONNECTED = 0, 3, 4


def probe_as(user: str, endpoint: Endpoint) -> int:
    """Try the endpoint as ``user``: REFUSED (the guard holds), CONNECTED, or NO_ANSWER."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, endpoint.host, str(endpoint.port),
         str(PROBE_TIMEOUT_SECONDS)],
        user=user, group=user, extra_groups=[],
        capture_output=True, text=True, check=False, timeout=PROBE_TIMEOUT_SECONDS + 30,
    )  # fmt: skip
    return result.returncode


def apply(mode: str, url: str, *, job_user: str) -> str:
    """Install (mode ``install``) and verify the guard for the metadata service at ``url``;
    a line for the log. Raises GuardError when a job could still reach it."""
    if mode not in MODES:
        raise GuardError(f"{GUARD_ENV} = {mode!r}: give one of {', '.join(MODES)}")
    endpoint = Endpoint.from_url(url)
    added = install(endpoint) if mode == "install" else False
    outcome = probe_as(job_user, endpoint)
    where = f"{endpoint.host}:{endpoint.port}"
    if outcome == CONNECTED:
        raise GuardError(
            f"the metadata service at {where} accepts connections from the job user "
            f"{job_user!r}: a job could take this node's credentials; "
            + (
                "the rule is in place but does not match"
                if mode == "install"
                else "the host has no firewall rule (the node bootstrap installs it)"
            )
        )
    if outcome != REFUSED:
        raise GuardError(
            f"the job user's probe of the metadata service at {where} was not refused "
            f"(exit {outcome}): the guard rejects with a reset, so this is not the guard"
        )
    return (
        f"metadata service {where} refused to non-root users"
        f" ({'rule added' if added else 'rule present'})"
    )
