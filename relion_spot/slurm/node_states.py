"""Node states as Slurm reports them (``scontrol --json show nodes``), for the controller's idle
watch and PrologSlurmctld's wait.

Not ``scontrol show node -o``'s text: its ``Reason=`` runs to the end of the line with spaces,
so a reason such as ``spot reclaim State=IDLE`` (any admin or program that sets one) reads as
more fields, and the last ``State=`` wins: a booting or powered-down node read as idle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

POWERED_DOWN = "POWERED_DOWN"


class NodeStatesError(ValueError):
    """Slurm's answer is not the node list this code reads; the message says what was wrong."""


@dataclass(frozen=True)
class NodeState:
    name: str
    flags: tuple[str, ...]
    """The base state first, then its flags: ``("IDLE", "CLOUD", "POWERED_DOWN")``."""

    @property
    def text(self) -> str:
        """As ``scontrol show node`` writes it: ``IDLE+CLOUD+POWERED_DOWN``."""
        return "+".join(self.flags)


def command(nodes: str = "") -> list[str]:
    """The scontrol call for every node, or for a host list (``gpu-[1-2]``)."""
    return ["scontrol", "--json", "show", "nodes", *([nodes] if nodes else [])]


def parse(text: str) -> list[NodeState]:
    """The nodes in ``scontrol --json show nodes`` output."""
    try:
        answer: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise NodeStatesError(f"scontrol answered no JSON ({err.msg})") from None
    listed = answer.get("nodes") if isinstance(answer, dict) else None
    if not isinstance(listed, list):
        raise NodeStatesError("scontrol answered without a 'nodes' list")
    return [_node(entry) for entry in listed]


def _node(entry: Any) -> NodeState:
    name = entry.get("name") if isinstance(entry, dict) else None
    flags = entry.get("state") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        raise NodeStatesError(f"scontrol listed a node without a name: {entry!r:.200}")
    if not isinstance(flags, list) or not flags or not all(isinstance(f, str) for f in flags):
        raise NodeStatesError(f"scontrol listed node {name} without a state: {flags!r:.200}")
    return NodeState(name=name, flags=tuple(flags))
