"""Slurm hostlist expressions (``gpu-[1-3,7]``, ``rack[1-2]-n[01-02]``) to node names.

Slurm hands the job record writer its nodes in this compressed form; the writer needs each name
to find the instance that played it.
"""

from __future__ import annotations

import itertools
import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
MAX_NODES = 100_000


class HostlistError(ValueError):
    pass


def _split_top_level(expression: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in expression:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"hostlist {expression!r}: unbalanced ']'")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise HostlistError(f"hostlist {expression!r}: unbalanced '['")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _expand_bracket(body: str, expression: str) -> list[str]:
    values: list[str] = []
    for item in body.split(","):
        match = _RANGE.match(item.strip())
        if not match:
            raise HostlistError(f"hostlist {expression!r}: bad range {item!r}")
        low_text, high_text = match.group(1), match.group(2) or match.group(1)
        low, high = int(low_text), int(high_text)
        if high < low:
            raise HostlistError(f"hostlist {expression!r}: range {item!r} runs backwards")
        if high - low >= MAX_NODES:
            raise HostlistError(f"hostlist {expression!r}: range {item!r} is too large")
        width = len(low_text)
        values.extend(str(n).zfill(width) for n in range(low, high + 1))
    return values


def expand(expression: str) -> list[str]:
    """Node names in order, duplicates dropped."""
    names: list[str] = []
    for part in _split_top_level(expression or ""):
        pieces: list[list[str]] = []
        for literal, bracket in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", part):
            if literal:
                pieces.append([literal])
            if bracket:
                pieces.append(_expand_bracket(bracket, expression))
        names.extend("".join(combo) for combo in itertools.product(*pieces))
        if len(names) > MAX_NODES:
            raise HostlistError(f"hostlist {expression!r}: more than {MAX_NODES} nodes")
    return list(dict.fromkeys(names))
