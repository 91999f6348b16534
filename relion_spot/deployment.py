"""Turns validated settings into the app's stacks; app.py calls it, and so do the tests."""

from __future__ import annotations

from aws_cdk import App, Environment, Stack, Tags, Validations
from cdk_nag import AwsSolutionsChecks

from . import tags
from .nag_acknowledgements import acknowledge_findings
from .settings import Settings
from .stacks.cluster import ClusterStack
from .stacks.network import NetworkStack
from .stacks.storage import StorageStack


def build(app: App, settings: Settings) -> dict[str, Stack]:
    """Add every stack for ``settings`` to ``app``; returns them by stack name."""
    env = Environment(account=settings.account, region=settings.region)
    network = NetworkStack(
        app,
        settings.network_stack_name,
        settings=settings,
        env=env,
        description="relion-spot: VPC shared by this deployment's clusters",
    )
    storage = StorageStack(
        app,
        settings.storage_stack_name,
        settings=settings,
        network=network.network,
        env=env,
        description="relion-spot: the lab's EFS (data, image cache, state)",
    )
    stacks: dict[str, Stack] = {network.stack_name: network, storage.stack_name: storage}
    for gpu_count in settings.gpus:
        name = settings.cluster_name(gpu_count)
        stacks[name] = ClusterStack(
            app,
            name,
            settings=settings,
            gpu_count=gpu_count,
            network=network.network,
            storage=storage.storage,
            env=env,
            description=f"relion-spot: Slurm cluster with {gpu_count}-GPU spot nodes",
        )
    Tags.of(app).add(tags.PROJECT, settings.project)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    acknowledge_findings(stacks.values())
    return stacks
