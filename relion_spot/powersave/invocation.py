"""What every power-save program does first: open its log, load its settings, read Slurm's
host list. Bad input ends the program here, before anything is launched or terminated."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import logs
from .config import DEFAULT_LOG_FILE, LOG_FILE_ENV, ConfigError, PowerSaveConfig
from .nodes import NodeListError, by_partition, expand_hostlist


class UsageError(ValueError):
    pass


def parse_args(args: list[str], config: PowerSaveConfig) -> dict[str, list[str]]:
    if len(args) != 1:
        raise UsageError(
            f"expected one argument, a Slurm host list such as gpu-[1-3]; got {len(args)}: {args}"
        )
    return by_partition(expand_hostlist(args[0]), config.groups)


@dataclass(frozen=True)
class Invocation:
    env: Mapping[str, str]
    config: PowerSaveConfig
    nodes: dict[str, list[str]]
    """Partition -> the node names Slurm named in it."""

    @property
    def node_names(self) -> list[str]:
        return [n for names in self.nodes.values() for n in names]


def start(
    program: str,
    log: logging.Logger,
    argv: Sequence[str] | None,
    environ: Mapping[str, str] | None,
    *,
    nothing_done: str,
) -> Invocation | None:
    """The program's settings and nodes, or None after one log line saying ``nothing_done``."""
    env = os.environ if environ is None else environ
    args = list(sys.argv[1:] if argv is None else argv)
    logs.setup(program, env.get(LOG_FILE_ENV, DEFAULT_LOG_FILE).strip())
    try:
        config = PowerSaveConfig.from_env(env)
        nodes = parse_args(args, config)
    except (ConfigError, NodeListError, UsageError) as err:
        log.error("%s: %s", nothing_done, err)
        return None
    return Invocation(env=env, config=config, nodes=nodes)


def ec2_client(config: PowerSaveConfig) -> Any:
    import boto3

    return boto3.session.Session().client("ec2", region_name=config.region)
