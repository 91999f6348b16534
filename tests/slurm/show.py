"""``scontrol show`` text read in tests, where a test looks at what an admin would see (the product
reads Slurm through ``--json``: relion_spot.slurm.squeue, relion_spot.slurm.node_states)."""

from __future__ import annotations


def scontrol_fields(text: str) -> dict[str, str]:
    """``scontrol show`` output (Key=Value pairs) as a dict; later keys win."""
    fields: dict[str, str] = {}
    for token in text.split():
        name, sep, value = token.partition("=")
        if sep:
            fields[name] = value
    return fields
