"""Listening sockets of the embedded cloud that only the project's containers and this host reach.

moto's server and the metadata service listen on this host's address on the cluster's Docker
network (its gateway). An address alone is not enough: Linux accepts a packet for any of the
host's addresses on any interface, so a container on another Docker network (or the default
bridge) reaches the gateway address of ours just as well. Binding the socket to the network's
bridge interface as well (SO_BINDTODEVICE) refuses connections that arrive on any other
interface; this host's own processes still connect.
"""

from __future__ import annotations

import socket


class ListenError(RuntimeError):
    """A listening socket could not be confined to the project's network; the message says why."""


def project_listener(
    host: str, interface: str, *, port: int = 0, backlog: int = 128
) -> socket.socket:
    """A TCP socket listening on ``host`` (the network's gateway address), accepting only what
    arrives through ``interface`` (the network's bridge) or from this host."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as err:
        sock.close()
        raise ListenError(
            f"cannot listen on {host}:{port} confined to interface {interface} ({err}); the "
            "embedded cloud needs Linux 5.7 or later, or CAP_NET_RAW, for SO_BINDTODEVICE"
        ) from None
    return sock
