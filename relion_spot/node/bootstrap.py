"""Fill the node bootstrap template (assets/slurm/node-bootstrap.sh) into user data.

The stack passes its values, CDK tokens included (they stay opaque strings until deploy); the
tag key comes from ``relion_spot.tags`` so the script never spells it. Values land inside single
quotes in the script, so a quote or a newline in one is refused rather than allowed to break it.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

from .. import tags

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "assets" / "slurm" / "node-bootstrap.sh"
PLACEHOLDERS = (
    "cluster_name",
    "file_system_id",
    "data_access_point_id",
    "containers_access_point_id",
    "slurm_image",
    "controller",
    "key_secret_arn",
    "spot_events_table",
)
"""What the stack must give ``render``; ``spot_events_table`` may be empty."""
OPTIONAL = frozenset({"spot_events_table"})


class BootstrapError(ValueError):
    pass


def render(**values: str) -> str:
    """The user-data script with every placeholder filled."""
    missing = sorted(set(PLACEHOLDERS) - set(values))
    unknown = sorted(set(values) - set(PLACEHOLDERS))
    if missing or unknown:
        raise BootstrapError(
            f"node bootstrap: missing {missing}, unknown {unknown}; expected {list(PLACEHOLDERS)}"
        )
    for name, value in values.items():
        if not isinstance(value, str) or (not value and name not in OPTIONAL):
            raise BootstrapError(f"node bootstrap: {name} = {value!r}, need a non-empty string")
        if "'" in value or "\n" in value:
            raise BootstrapError(f"node bootstrap: {name} = {value!r} contains a quote or newline")
    template = Template(TEMPLATE_PATH.read_text())
    return template.substitute(values, node_tag_key=tags.NODE)
