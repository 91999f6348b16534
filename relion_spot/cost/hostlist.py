"""Slurm host lists (``gpu-[1-3,7]``, ``rack[1-2]-n[01-02]``) to node names and back, by
python-hostlist (Slurm's own syntax: zero-padded ranges, several bracket groups, commas at the
top level only).

Slurm hands the job record writer, the power-saving programs and squeue's readers nodes in this
compressed form; they need each name to find the instance that played it.
"""

from __future__ import annotations

from collections.abc import Iterable

import hostlist


class HostlistError(ValueError):
    pass


def expand(expression: str) -> list[str]:
    """Node names in order, duplicates dropped; HostlistError names the expression and why."""
    try:
        return list(hostlist.expand_hostlist(expression or ""))
    except hostlist.BadHostlist as err:
        raise HostlistError(f"hostlist {expression!r}: {err}") from None


def compress(names: Iterable[str]) -> str:
    """Names as a compact Slurm host list (``cpu-1,gpu-[1-3,5]``), for log lines and scontrol."""
    return str(hostlist.collect_hostlist(list(dict.fromkeys(names))))
