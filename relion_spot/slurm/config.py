"""Render slurm.conf, gres.conf and cgroup.conf from a ``ClusterSpec``.

The text lives in templates under assets/slurm/ (comments explain every choice); this module only
fills them in. Rendering is deterministic, so golden files can pin the output per GPU count.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from .spec import ClusterSpec, PartitionSpec

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "assets" / "slurm"
"""assets/slurm beside the package: in the repository and in the image (/opt/relion-spot)."""

CONFIG_FILES = ("slurm.conf", "gres.conf", "cgroup.conf")

MAX_TREE_WIDTH = 65533
"""Slurm's upper bound for TreeWidth."""

_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


class RenderError(ValueError):
    """A value that cannot go into slurm.conf; the message names it."""


def render(spec: ClusterSpec, *, controller_host: str, controller_addr: str) -> dict[str, str]:
    """File name -> content of every config file the controller serves to nodes.

    ``controller_host`` must be the controller's short hostname (slurmctld refuses to start
    under another name); ``controller_addr`` is how nodes and commands reach it.
    """
    for what, value in (("controller_host", controller_host), ("controller_addr", controller_addr)):
        if not _HOST_RE.fullmatch(value):
            raise RenderError(f"{what} = {value!r} is not a host name or IPv4 address")
    if "." in controller_host:
        raise RenderError(f"controller_host = {controller_host!r}: give the short hostname")
    values = {
        "cluster_name": spec.cluster_name,
        "controller_host": controller_host,
        "controller_addr": controller_addr,
        "slurmctld_port": str(spec.slurmctld_port),
        "slurmd_port": str(spec.slurmd_port),
        "slurmd_parameters_line": _slurmd_parameters(spec),
        "state_save_location": spec.state_save_location,
        "slurmd_timeout": str(spec.slurmd_timeout),
        "min_job_age": str(spec.min_job_age),
        "suspend_time": str(spec.suspend_time),
        "resume_timeout": str(spec.resume_timeout),
        "suspend_timeout": str(spec.suspend_timeout),
        "powersave_bin_dir": spec.powersave_bin_dir,
        "tree_width": str(min(MAX_TREE_WIDTH, sum(p.max_nodes for p in spec.partitions))),
        "node_lines": "\n".join(_node_line(p) for p in spec.partitions),
        "partition_lines": "\n".join(_partition_line(p) for p in spec.partitions),
        "gres_lines": "\n".join(_gres_line(p, spec.gpu_device_prefix) for p in spec.partitions),
    }
    return {name: _fill(f"{name}.tmpl", values) for name in CONFIG_FILES}


def _fill(template_name: str, values: dict[str, str]) -> str:
    text = (TEMPLATE_DIR / template_name).read_text()
    return Template(text).substitute(values)


def _slurmd_parameters(spec: ClusterSpec) -> str:
    if not spec.config_overrides:
        return (
            "# Nodes are validated against their declaration (CLOUD nodes may register with 90 %\n"
            "# of RealMemory, Slurm's default for them); a type with fewer resources is refused."
        )
    return (
        "# Local cloud: node containers share this host's few cores, so each node is taken to be\n"
        "# what it is declared as (config_overrides), as the instance it stands for would be.\n"
        "SlurmdParameters=config_overrides"
    )


def _node_line(part: PartitionSpec) -> str:
    gres = f" Gres=gpu:{part.gpus}" if part.gpus else ""
    return (
        f"NodeName={part.node_names} CPUs={part.cpus} RealMemory={part.real_memory_mib}{gres}"
        f" Features={','.join(part.instance_types)} State=CLOUD"
    )


def _partition_line(part: PartitionSpec) -> str:
    return (
        f"PartitionName={part.name} Nodes={part.node_names}"
        f" Default={'YES' if part.default else 'NO'} MaxTime=INFINITE State=UP"
        f" DefMemPerCPU={part.def_mem_per_cpu_mib}"
    )


def _gres_line(part: PartitionSpec, device_prefix: str) -> str:
    if not part.gpus:
        return f"# {part.name}: no GPUs"
    files = f"{device_prefix}0" if part.gpus == 1 else f"{device_prefix}[0-{part.gpus - 1}]"
    return f"NodeName={part.node_names} Name=gpu File={files}"


def write(files: dict[str, str], directory: Path) -> None:
    """Write rendered files readable by everyone (slurm.conf holds no secret)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        path.chmod(0o644)
