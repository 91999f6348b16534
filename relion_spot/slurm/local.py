"""Slurm containers on the local Docker engine: a controller and nodes on a project-made network.

Used by the container tests and by the embedded local cloud (whose reconciler starts and stops
node containers as moto instances come and go). Everything goes through the ``docker`` CLI and
stays on a Docker network this module creates; nothing else is addressed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import squeue
from .entrypoint import CONTROLLER_ADDR_ENV, CONTROLLER_ENV, PLACEHOLDER_GPUS_ENV
from .key import KEY_FILE_ENV, KEY_PARAMETER_ARN_ENV
from .spec import CPU_PARTITION, SPEC_ENV, ClusterSpec
from .squeue import SlurmJob

SLURM_IMAGE = os.environ.get("RELION_SPOT_SLURM_IMAGE", "relion-spot/slurm:dev")
LOCAL_NODE_IMAGE = os.environ.get(
    "RELION_SPOT_LOCAL_NODE_IMAGE", "relion-spot/slurm-local-node:dev"
)
"""Tags scripts/setup-docker.sh builds (same environment variables override both)."""

LABEL = "relion-spot.local"
"""Docker label on every container and network made here; its value is the cluster's prefix."""

KEY_MOUNT = "/run/secrets/slurm.key"
STATE_MOUNT = "/var/spool/slurmctld"
DATA_MOUNT = "/data"
"""Where the shared file system (EFS in the cloud) is mounted on the controller and every node."""
CONTAINERS_MOUNT = "/containers"
"""Where every node finds the RELION image cache (an EFS access point in the cloud)."""
CONTAINER_CACHE = Path(
    os.environ.get(
        "RELION_SPOT_CONTAINER_CACHE", Path(__file__).resolve().parents[2] / ".local" / "containers"
    )
)
"""The embedded cloud's image cache on this host, shared by all its clusters: what
scripts/setup-docker.sh exports the RELION image into, and where jobs keep its SIF."""
APPTAINER_ARGS: tuple[str, ...] = (
    "--device", "/dev/fuse",
    "--security-opt", "seccomp=unconfined",
)  # fmt: skip
"""What a node container needs so the job user can ``apptainer exec`` a SIF, unprivileged, and
no more: /dev/fuse for squashfuse (the entrypoint opens it to the job user), and user namespaces,
which Docker's default seccomp profile refuses to a process without CAP_SYS_ADMIN. The same
flags as the node bootstrap's on a GPU instance (assets/slurm/node-bootstrap.sh)."""
IMAGE_BUILD_ARGS: tuple[str, ...] = ("--security-opt", "systempaths=unconfined")
"""What a CPU node adds, as the bootstrap's does, so its image job can build an image from a
definition (``apptainer build --fakeroot --ignore-subuid``: the build's user namespace mounts its
own /proc, which Docker's masked /proc paths forbid). GPU nodes never build."""


class DockerError(RuntimeError):
    """A docker command failed; the message carries its stderr."""


def docker_available() -> str | None:
    """None if a Docker engine answers, else why not (for a test skip or a CLI message)."""
    if shutil.which("docker") is None:
        return "the docker command is not installed (scripts/setup-docker.sh installs it)"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "no Docker engine answers (scripts/setup-docker.sh starts one)"
    return None


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and result.returncode != 0:
        raise DockerError(f"docker {' '.join(args[:2])} failed: {result.stderr.strip()}")
    return result


def write_key(path: Path) -> Path:
    """A fresh auth/slurm key for a local cluster (48 random bytes, owner-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(os.urandom(48))
    return path


@dataclass
class LocalSlurm:
    """One cluster's containers. ``prefix`` names the network and every container."""

    prefix: str
    spec: ClusterSpec
    key_file: Path | None
    """The auth/slurm key to mount; None where containers fetch it from Parameter Store."""
    state_dir: Path
    image: str = SLURM_IMAGE
    node_image: str = SLURM_IMAGE
    nodes: dict[str, str] = field(default_factory=dict)
    """Node name -> container name, for the nodes started here."""
    data_dir: Path | None = None
    """A host directory mounted at /data on the controller and every node (EFS's stand-in)."""
    containers_dir: Path | None = None
    """A host directory mounted at /containers on every node: the RELION image cache."""

    @property
    def network(self) -> str:
        return f"{self.prefix}-net"

    @property
    def controller(self) -> str:
        return f"{self.prefix}-ctl"

    def node_container(self, node_name: str) -> str:
        return f"{self.prefix}-{node_name}"

    def create_network(self) -> None:
        if docker("network", "inspect", self.network, check=False).returncode != 0:
            docker("network", "create", "--label", f"{LABEL}={self.prefix}", self.network)

    def gateway_address(self) -> str:
        """This host's address on the cluster's network: where a service on the host (moto's
        server, say) is reachable from the containers, without leaving the project's network."""
        self.create_network()
        result = docker(
            "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}} {{end}}", self.network
        )
        gateways = result.stdout.split()
        if not gateways:
            raise DockerError(f"network {self.network} has no gateway address")
        return gateways[0]

    def bridge_interface(self) -> str:
        """The host's interface of the cluster's network: what a service listening on
        ``gateway_address`` binds to, so that no other Docker network reaches it."""
        self.create_network()
        result = docker("network", "inspect", "-f", "{{.Id}} {{json .Options}}", self.network)
        network_id, options = result.stdout.strip().split(" ", 1)
        named = (json.loads(options) or {}).get("com.docker.network.bridge.name")
        return str(named) if named else f"br-{network_id[:12]}"

    def start_controller(self, env: dict[str, str] | None = None) -> None:
        """Create and start the controller, or start it again on the same state directory.

        ``env``: more environment for the controller (e.g. AWS_ENDPOINT_URL and the key's
        parameter ARN instead of the key file); it may replace the address nodes are given."""
        if docker("container", "inspect", self.controller, check=False).returncode == 0:
            docker("start", self.controller)
            return
        self.create_network()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        docker(
            "run", "-d", "--name", self.controller,
            # A stable hostname: SlurmctldHost must name this container on every start.
            "--hostname", self.controller,
            "--network", self.network,
            "--label", f"{LABEL}={self.prefix}",
            "-e", f"{SPEC_ENV}={self.spec.to_json()}",
            # Nodes reach the controller by name (Docker's DNS), as they do by its Cloud Map name
            # in the cloud: a restarted controller may come back at another address.
            *self._key_args({CONTROLLER_ADDR_ENV: self.controller, **(env or {})}),
            "-v", f"{self.state_dir.resolve()}:{STATE_MOUNT}",
            *self._data_args(),
            *self._containers_args(read_only=True),
            self.image, "controller",
        )  # fmt: skip

    def stop_controller(self, timeout: int = 30) -> None:
        """SIGTERM (through tini) and wait: slurmctld saves its state before it exits."""
        docker("stop", "-t", str(timeout), self.controller, timeout=timeout + 30)

    def start_node(
        self,
        node_name: str,
        *,
        placeholder_gpus: int = 0,
        image: str | None = None,
        env: dict[str, str] | None = None,
        net_admin: bool = False,
    ) -> str:
        """Start slurmd for ``node_name`` in a container of its own (``image`` defaults to
        ``node_image``); it registers with the controller by itself. ``net_admin``: the
        container's root may set its firewall (the metadata guard, relion_spot.node.
        metadata_guard); jobs, which run as the job user, hold no capability either way."""
        container = self.node_container(node_name)
        docker(
            "run", "-d", "--name", container,
            "--hostname", node_name,
            "--network", self.network,
            "--label", f"{LABEL}={self.prefix}",
            "-e", f"{CONTROLLER_ENV}={self.controller}:{self.spec.slurmctld_port}",
            "-e", f"{PLACEHOLDER_GPUS_ENV}={placeholder_gpus}",
            *self._key_args(env),
            *self._data_args(),
            *APPTAINER_ARGS,
            *(IMAGE_BUILD_ARGS if self._builds_images(node_name) else ()),
            *(["--cap-add", "NET_ADMIN"] if net_admin else []),
            # As the bootstrap: only a CPU node (its image job) writes the image cache.
            *self._containers_args(read_only=not self._builds_images(node_name)),
            image or self.node_image, "node", node_name,
        )  # fmt: skip
        self.nodes[node_name] = container
        return container

    def _builds_images(self, node_name: str) -> bool:
        partition = self.spec.partition_of(node_name)
        return partition is not None and partition.name == CPU_PARTITION

    def _containers_args(self, *, read_only: bool = False) -> list[str]:
        """The image cache: CPU nodes make images, GPU nodes use them; the controller only looks
        (the intake finds an image already checked)."""
        if self.containers_dir is None:
            return []
        suffix = ":ro" if read_only else ""
        return ["-v", f"{self.containers_dir.resolve()}:{CONTAINERS_MOUNT}{suffix}"]

    def _data_args(self) -> list[str]:
        if self.data_dir is None:
            return []
        return ["-v", f"{self.data_dir.resolve()}:{DATA_MOUNT}"]

    def _key_args(self, env: dict[str, str] | None) -> list[str]:
        """The key as a mounted file, unless ``env`` names a parameter instead; then ``env``."""
        args = []
        if not env or KEY_PARAMETER_ARN_ENV not in env:
            if self.key_file is None or not self.key_file.is_file():
                raise ValueError(
                    f"no Slurm key for {self.prefix}: key_file = {self.key_file} is not a file, "
                    f"and env has no {KEY_PARAMETER_ARN_ENV}"
                )
            args += ["-e", f"{KEY_FILE_ENV}={KEY_MOUNT}"]
            args += ["-v", f"{self.key_file.resolve()}:{KEY_MOUNT}:ro"]
        for name, value in (env or {}).items():
            args += ["-e", f"{name}={value}"]
        return args

    def remove_node(self, node_name: str) -> None:
        """Kill the node's container outright, as a vanished instance would be."""
        docker("rm", "-f", self.node_container(node_name), check=False)
        self.nodes.pop(node_name, None)

    def run(self, *command: str, user: str = "relion", container: str | None = None) -> str:
        """Run a command in a container (the controller by default) as ``user``; its stdout."""
        result = docker(
            "exec", "-u", user, "-w", "/tmp", container or self.controller, *command, check=False
        )
        if result.returncode != 0:
            raise DockerError(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result.stdout

    def is_running(self, container: str | None = None) -> bool:
        result = docker(
            "container", "inspect", "-f", "{{.State.Running}}", container or self.controller,
            check=False,
        )  # fmt: skip
        return result.stdout.strip() == "true"

    def logs(self, container: str | None = None, tail: int = 200) -> str:
        result = docker("logs", "--tail", str(tail), container or self.controller, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        """Remove every container and the network of this cluster (found by label)."""
        listed = docker("ps", "-aq", "--filter", f"label={LABEL}={self.prefix}", check=False)
        ids = listed.stdout.split()
        if ids:
            docker("rm", "-f", *ids, check=False)
        docker("network", "rm", self.network, check=False)
        self.nodes.clear()


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.25,
) -> object:
    """Poll ``condition`` until it returns something truthy, and return that; on timeout raise
    TimeoutError naming what was awaited (``what`` may be a callable, e.g. one that reads logs
    only when they are needed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what() if callable(what) else what}")
        time.sleep(interval)


def listed_job(cluster: LocalSlurm, job_id: str) -> SlurmJob:
    """Slurm job ``job_id`` as ``squeue --json`` lists it, in any state; DockerError when
    slurmctld does not answer, SqueueError when it lists no such job."""
    jobs = squeue.parse(cluster.run(*squeue.command(f"--jobs={job_id}", "--states=all")))
    found = next((job for job in jobs if job.job_id == job_id), None)
    if found is None:
        raise squeue.SqueueError(f"squeue lists no job {job_id}")
    return found


def sbatch(cluster: LocalSlurm, args: Sequence[str]) -> int:
    """Submit as the job user; the job id (``--parsable``)."""
    out = cluster.run("sbatch", "--parsable", *args).strip()
    return int(out.split(";", 1)[0])
