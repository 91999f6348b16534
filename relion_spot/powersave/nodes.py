"""Slurm's host list argument -> node names, checked against the node groups, by partition.

Node names are ``<partition>-<n>`` with n from 1 to the group's max_nodes (see
``relion_spot.slurm.spec``). A name outside that is refused before anything is launched or
terminated: it means Slurm and the programs disagree about the cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..cost.hostlist import HostlistError, compress, expand
from .config import NodeGroup

_NODE = re.compile(r"^(?P<prefix>[A-Za-z][A-Za-z0-9_-]*)-(?P<index>[1-9][0-9]*)$")


class NodeListError(ValueError):
    """A host list that cannot be used; the message names the value and what is accepted."""


def expand_hostlist(expression: str) -> list[str]:
    """Node names of a Slurm host list, in order; an empty or malformed list is refused."""
    if not expression.strip():
        raise NodeListError("no nodes given: expected a Slurm host list such as gpu-[1-3],cpu-1")
    try:
        names = expand(expression)
    except HostlistError as err:
        raise NodeListError(f"{err}; expected a Slurm host list such as gpu-[1-3],cpu-1") from None
    if not names:
        raise NodeListError(f"host list {expression!r} names no nodes")
    return names


def by_partition(names: Iterable[str], groups: Mapping[str, NodeGroup]) -> dict[str, list[str]]:
    """Node names grouped by partition (each group sorted by node number)."""
    grouped: dict[str, list[str]] = {}
    unknown: list[str] = []
    for name in names:
        match = _NODE.match(name)
        group = groups.get(match.group("prefix")) if match else None
        if match is None or group is None or int(match.group("index")) > group.max_nodes:
            unknown.append(name)
            continue
        grouped.setdefault(group.partition, []).append(name)
    if unknown:
        accepted = ", ".join(
            f"{g.partition}-[1-{g.max_nodes}]" if g.max_nodes > 1 else f"{g.partition}-1"
            for g in groups.values()
        )
        raise NodeListError(f"unknown node names {compress(unknown)}; this cluster has {accepted}")
    return {part: sorted(nodes, key=node_number) for part, nodes in grouped.items()}


def node_number(name: str) -> int:
    match = _NODE.match(name)
    return int(match.group("index")) if match else 0
