"""The local hypervisor: each running moto instance of the cluster becomes a node container.

moto keeps instances as records and emits no state-change events, so a poll loop compares the
cluster's instances (found by ``relion_spot.tags.CLUSTER``) with the node containers it started:
a running instance with a node name (``relion_spot.tags.NODE``, set by the resume program) gets a
container of the node image, started as that node, and - as the node bootstrap does on EC2 - the
spot watcher inside it, reading this cloud's metadata service (``relion_spot.local.imds``); a
container whose instance is terminated, stopping or gone is removed outright, as a vanished
machine would be. Each decision is one log line; a poll with nothing to change says nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import tags
from ..node.imds import IMDS_URL_ENV
from ..node.metadata_guard import GUARD_ENV
from ..slurm.local import DockerError, LocalSlurm, docker
from .imds import LocalImds

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
RUNNING = "running"


@dataclass(frozen=True)
class Machine:
    """A node container and the instance it plays."""

    node: str
    instance_id: str
    container: str
    started: float
    """``time.monotonic()`` when the container was started."""


class Reconciler:
    """Plays the hypervisor for one cluster. ``poll`` once, or ``start``/``stop`` a thread.

    ``node_env``: the node containers' environment (the key's source, AWS endpoint and region);
    ``cpu_node_env``: what CPU nodes get besides (the stage reader's role, as the bootstrap).
    ``spot_watcher``: run the spot watcher in each node container, with the metadata service
    started (on this host's address on the cluster network) for as long as the reconciler runs.
    ``controller_service``: (ECS cluster, service) whose desired count (read through ``ecs``) the
    controller container follows, as Fargate would: 0 stops it (SIGTERM, slurmctld saves its
    state), 1 starts it again.
    """

    def __init__(
        self,
        local: LocalSlurm,
        ec2: Any,
        *,
        node_env: dict[str, str] | None = None,
        cpu_node_env: dict[str, str] | None = None,
        poll_seconds: float = POLL_SECONDS,
        spot_watcher: bool = False,
        controller_service: tuple[str, str] | None = None,
        ecs: Any = None,
    ) -> None:
        self.local = local
        self.ec2 = ec2
        self.node_env = dict(node_env or {})
        self.cpu_node_env = dict(cpu_node_env or {})
        self.poll_seconds = poll_seconds
        self.machines: dict[str, Machine] = {}
        """Node name -> the container started for it, while its instance runs."""
        self.notices: dict[str, dict[str, str]] = {}
        """Instance id -> its spot interruption notice, as IMDS ``spot/instance-action`` gives it
        (``{"action": "terminate", "time": "...Z"}``), from ``reclaim`` on."""
        self._reclaims: dict[str, float] = {}
        """Instance id -> ``time.monotonic()`` at which EC2 takes it back."""
        self.controller_service = controller_service
        self.ecs = ecs
        if controller_service is not None and ecs is None:
            raise ValueError("controller_service needs an ecs client")
        self.imds: LocalImds | None = None
        if spot_watcher:
            self.imds = LocalImds(
                ec2,
                notices=self.notices.get,
                host=local.gateway_address(),
                interface=local.bridge_interface(),
            )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def cluster(self) -> str:
        return self.local.spec.cluster_name

    def running_instances(self) -> dict[str, str]:
        """Node name -> instance id of the cluster's running, named instances."""
        found: dict[str, str] = {}
        paginator = self.ec2.get_paginator("describe_instances")
        filters = [{"Name": f"tag:{tags.CLUSTER}", "Values": [self.cluster]}]
        for page in paginator.paginate(Filters=filters):
            for reservation in page["Reservations"]:
                for raw in reservation["Instances"]:
                    node = {t["Key"]: t["Value"] for t in raw.get("Tags") or []}.get(tags.NODE)
                    if node and raw["State"]["Name"] == RUNNING:
                        if node in found:
                            log.warning(
                                "%s: instances %s and %s both play it; keeping %s",
                                node,
                                found[node],
                                raw["InstanceId"],
                                found[node],
                            )
                            continue
                        found[node] = raw["InstanceId"]
        return found

    def reclaim(self, instance_id: str, grace_seconds: float = 120) -> dict[str, str]:
        """Take a spot instance back as EC2 does: the interruption notice now, the instance
        terminated ``grace_seconds`` later (and with it, on the next poll, its container).

        Returns the notice, also kept in ``notices``, where the metadata service finds it."""
        at = datetime.now(UTC) + timedelta(seconds=grace_seconds)
        notice = {"action": "terminate", "time": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
        with self._lock:
            self.notices[instance_id] = notice
            self._reclaims[instance_id] = time.monotonic() + grace_seconds
        log.info("%s: spot reclaim noticed, terminating at %s", instance_id, notice["time"])
        return notice

    def _terminate_reclaimed(self) -> None:
        now = time.monotonic()
        due = sorted(i for i, at in self._reclaims.items() if at <= now)
        if due:
            log.info("%s: reclaim grace over; terminating", ", ".join(due))
            self.ec2.terminate_instances(InstanceIds=due)
            for instance_id in due:
                del self._reclaims[instance_id]

    def poll(self) -> None:
        """One round: the controller to its service's desired count; end reclaimed instances
        whose grace is over, start what runs without a container, remove what runs no more."""
        with self._lock:
            self._follow_controller_service()
            self._terminate_reclaimed()
            wanted = self.running_instances()
            for node, machine in list(self.machines.items()):
                if wanted.get(node) != machine.instance_id:
                    log.info(
                        "%s: instance %s is no longer running; removing container %s",
                        node,
                        machine.instance_id,
                        machine.container,
                    )
                    self.local.remove_node(node)
                    del self.machines[node]
            for node, instance_id in sorted(wanted.items()):
                if node not in self.machines:
                    self._boot(node, instance_id)

    def _follow_controller_service(self) -> None:
        if self.controller_service is None:
            return
        cluster, service = self.controller_service
        found = self.ecs.describe_services(cluster=cluster, services=[service])["services"]
        desired = int(found[0]["desiredCount"]) if found else 0
        running = self.local.is_running()
        if desired == 0 and running:
            log.info("%s: desired count 0; stopping the controller (it saves its state)", service)
            self.local.stop_controller()
        elif desired >= 1 and not running:
            log.info("%s: desired count %d; starting the controller", service, desired)
            self.local.start_controller()

    def _boot(self, node: str, instance_id: str) -> None:
        gpus = self._gpus(node)
        log.info(
            "%s: instance %s is running; starting its container (%d GPUs)", node, instance_id, gpus
        )
        # A container left from an earlier instance of this node (or an earlier reconciler) is a
        # machine that no longer exists: it goes before the new one boots.
        self.local.remove_node(node)
        env, url = dict(self.node_env), ""
        if not gpus:
            env |= self.cpu_node_env
        if self.imds is not None:
            # The instance's metadata service, shut to jobs by the node's own firewall before
            # slurmd starts (as the bootstrap shuts 169.254.169.254 on a GPU instance).
            self.imds.start()
            url = self.imds.url_for(instance_id)
            env |= {IMDS_URL_ENV: url, GUARD_ENV: "install"}
        container = self.local.start_node(
            node, placeholder_gpus=gpus, env=env, net_admin=self.imds is not None
        )
        self.machines[node] = Machine(node, instance_id, container, time.monotonic())
        if url:
            self._start_spot_watcher(node, url, container)

    def _start_spot_watcher(self, node: str, url: str, container: str) -> None:
        docker(
            "exec", "-d", container,
            "/opt/relion-spot/venv/bin/python", "-I", "-m", "relion_spot.node.spot_watcher",
        )  # fmt: skip
        log.info("%s: spot watcher started (metadata at %s)", node, url)

    def _gpus(self, node: str) -> int:
        partition = self.local.spec.partition_of(node)
        if partition is None:
            raise ValueError(f"node {node!r} belongs to no partition of {self.cluster}")
        return partition.gpus

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as err:  # a failed round is retried, never fatal
                reason = str(err) if isinstance(err, DockerError) else repr(err)
                log.warning("reconcile round failed, retrying: %s", reason)
            self._stop.wait(self.poll_seconds)

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.imds is not None:
            self.imds.start()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name=f"reconciler-{self.cluster}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Stop polling (containers stay; ``LocalSlurm.remove`` clears them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.imds is not None:
            self.imds.stop()

    def __enter__(self) -> Reconciler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
