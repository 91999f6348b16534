"""What the Slurm container runs under tini: set up one role, then become its daemon.

    controller              render slurm.conf from the spec, install the key, run slurmctld
                            (and beside it the job intake's drainer, when the intake queue is
                            configured: RELION_SPOT_INTAKE_QUEUE_URL, and the idle watch that
                            puts the controller to sleep: RELION_SPOT_CONTROLLER_IDLE_SECONDS)
    node [NAME]             install the key, run slurmd configless against the controller

Environment (controller): RELION_SPOT_SLURM_SPEC (ClusterSpec JSON), optionally
RELION_SPOT_CONTROLLER_ADDR (how nodes reach the controller: a DNS name in the cloud; default the
address this container's hostname resolves to). Environment (node): RELION_SPOT_CONTROLLER
(host[:port] of slurmctld), RELION_SPOT_NODE_NAME unless NAME is given, and
RELION_SPOT_METADATA_GUARD (install|verify: the metadata service is shut to jobs before slurmd
starts, see relion_spot.node.metadata_guard), RELION_SPOT_STAGE_READ_ROLE (staging jobs' S3 reads)
and RELION_SPOT_EXCHANGE_ROLE (export and import jobs' S3 access), both through
relion_spot.node.stage_credentials. Both: the key's source (see relion_spot.slurm.key).

Bad input ends the container with one line on stderr and exit status 2, before any daemon starts.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shlex
import signal
import socket
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..budget.config import BUDGET_ENV
from ..intake.report import REPORT_SPOOL
from ..node import job_reports, metadata_guard, stage_credentials
from ..node.imds import IMDS_URL_ENV
from . import config, key
from .spec import LOCAL_GPU_DEVICE_PREFIX, SLURMCTLD_PORT, SPEC_ENV, ClusterSpec, SpecError

CONTROLLER_ADDR_ENV = "RELION_SPOT_CONTROLLER_ADDR"
CONTROLLER_ENV = "RELION_SPOT_CONTROLLER"
NODE_NAME_ENV = "RELION_SPOT_NODE_NAME"
PLACEHOLDER_GPUS_ENV = "RELION_SPOT_PLACEHOLDER_GPUS"
"""Local cloud only: how many placeholder GPU device files the node gets (see
spec.LOCAL_GPU_DEVICE_PREFIX); the cloud's nodes have real /dev/nvidiaN."""
SLURM_RUN_DIR = Path("/run/slurm")
"""Configless config cache and the sack socket; slurmd wants it owned by SlurmUser."""

SLURM_CONF_DIR = Path("/etc/slurm")
HOSTS_FILE = Path("/etc/hosts")
RUNTIME_DIR = Path("/etc/relion-spot")
POWERSAVE_ENV_FILE = RUNTIME_DIR / "powersave.env"
"""Shell-quoted KEY=value lines the power-save wrappers (assets/slurm/bin) load: slurmctld runs
those programs with an environment of its own, not the container's."""
CLUSTER_SPEC_FILE = RUNTIME_DIR / "cluster.json"
NODE_ENV_FILE = RUNTIME_DIR / "node.env"
"""The same for a node's Prolog/Epilog (assets/slurm/bin/prolog, epilog), which slurmd runs as
root with an environment of its own."""
POWERSAVE_ENV_PREFIXES = ("AWS_", "RELION_SPOT_")
"""Region, endpoint (moto locally), the ECS task-role credential URI, and the project's own
settings; the key's location is not a secret, the key itself never goes in this file."""

SLURM_USER = "slurm"
JOB_USER = "relion"
"""Jobs run as this user (uid 1000, the owner of files on /data), never as root."""
INTAKE_QUEUE_ENV = "RELION_SPOT_INTAKE_QUEUE_URL"
INTAKE_SBATCH_ENV = "RELION_SPOT_INTAKE_SBATCH"
INTAKE_TABLE_ENV = "RELION_SPOT_INTAKE_TABLE"
JOB_TAGS_ENV = "RELION_SPOT_JOB_TAGS"
"""Set to 1 by the node bootstrap on an EC2 node (the Prolog and Epilog tag the instance)."""
"""On a node: the table the job-report forwarder writes jobs' progress into (no table, no
forwarder)."""
IDLE_SECONDS_ENV = "RELION_SPOT_CONTROLLER_IDLE_SECONDS"
ROLES = ("controller", "node")


class SetupError(RuntimeError):
    """Bad input to the entrypoint; the message is printed as is."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        command = _prepare(args, os.environ)
    except (
        SetupError,
        SpecError,
        config.RenderError,
        key.SlurmKeyError,
        metadata_guard.GuardError,
    ) as err:
        print(f"relion-spot entrypoint: {err}", file=sys.stderr)
        return 2
    if args[:1] == ["controller"] and os.environ.get(INTAKE_QUEUE_ENV, "").strip():
        _start_intake_drainer(os.environ)
    if args[:1] == ["controller"] and os.environ.get(IDLE_SECONDS_ENV, "").strip():
        _start_beside("relion_spot.slurm.idle", os.environ, "idle watch")
    if args[:1] == ["controller"] and os.environ.get(INTAKE_TABLE_ENV, "").strip():
        # Which of the power-save programs' calls AWS would refuse, known before a job waits.
        _start_beside("relion_spot.selftest.check", os.environ, "permission check")
        # The nodes' reports into their jobs' submissions, once Slurm says who runs what.
        _start_beside("relion_spot.intake.relay", os.environ, "report relay")
    if args[:1] == ["controller"] and BUDGET_ENV in os.environ:
        # Present, even empty, on every deployed controller: a cap removed releases its holds.
        _start_beside("relion_spot.budget.release", os.environ, "budget release loop")
    if args[:1] == ["node"] and os.environ.get(INTAKE_TABLE_ENV, "").strip():
        node_env = {**os.environ, NODE_NAME_ENV: command[command.index("-N") + 1]}
        _start_beside("relion_spot.node.job_reports", node_env, "job-report forwarder")
    if (
        args[:1] == ["node"]
        and os.environ.get(INTAKE_TABLE_ENV, "").strip()
        and (os.environ.get(JOB_TAGS_ENV) == "1" or os.environ.get(IMDS_URL_ENV, "").strip())
    ):
        # On an EC2 node (or the embedded cloud's): which of the node role's calls AWS would
        # refuse, recorded for relion-spot selftest.
        _start_beside("relion_spot.selftest.node_check", os.environ, "node permission check")
    if args[:1] == ["node"] and any(
        os.environ.get(name, "").strip()
        for name in (stage_credentials.ROLE_ENV, stage_credentials.EXCHANGE_ROLE_ENV)
    ):
        # Staging from s3:// (with stage_buckets) and exports to the results exchange (CPU
        # nodes): jobs get the role's session here.
        node_env = {**os.environ, NODE_NAME_ENV: command[command.index("-N") + 1]}
        _start_beside("relion_spot.node.stage_credentials", node_env, "S3 credential broker")
    print(f"relion-spot entrypoint: exec {shlex.join(command)}", file=sys.stderr, flush=True)
    _reset_signals()
    os.execvp(command[0], command)
    return 0  # not reached


def _start_intake_drainer(env: Mapping[str, str]) -> None:
    """The drainer runs beside slurmctld (it waits for Slurm to answer before it takes anything
    from the queue); its log goes to the container's output, like slurmctld's. It submits as the
    job user."""
    child_env = dict(env)
    child_env.setdefault(INTAKE_SBATCH_ENV, f"runuser -u {JOB_USER} -- sbatch")
    _start_beside("relion_spot.intake.drain", child_env, "job intake drainer")


def _start_beside(module: str, env: Mapping[str, str], what: str) -> None:
    """A helper process next to the daemon; its log goes to the container's output."""
    import subprocess

    subprocess.Popen([sys.executable, "-I", "-m", module], env=dict(env), close_fds=True)
    print(f"relion-spot entrypoint: {what} started", file=sys.stderr, flush=True)


def _prepare(args: list[str], env: Mapping[str, str]) -> list[str]:
    if not args or args[0] not in ROLES:
        given = args[0] if args else "(nothing)"
        raise SetupError(f"role {given!r} is not one of: {', '.join(ROLES)}")
    role, rest = args[0], args[1:]
    if role == "controller":
        if rest:
            raise SetupError(f"controller takes no arguments, got {rest}")
        return prepare_controller(env)
    if len(rest) > 1:
        raise SetupError(f"node takes at most one argument (the node name), got {rest}")
    return prepare_node(env, rest[0] if rest else env.get(NODE_NAME_ENV, ""))


def prepare_controller(env: Mapping[str, str]) -> list[str]:
    """Render the config, install the key and state dir; the slurmctld command line."""
    raw_spec = env.get(SPEC_ENV, "")
    if not raw_spec.strip():
        raise SetupError(f"{SPEC_ENV} is empty: it must carry the cluster spec as JSON")
    spec = ClusterSpec.from_json(raw_spec)
    host = socket.gethostname().split(".")[0]
    addr = env.get(CONTROLLER_ADDR_ENV, "").strip() or _own_address(host)
    files = config.render(spec, controller_host=host, controller_addr=addr)
    slurm_key = key.load_key(env)
    slurm = _slurm_user()
    key.install_key(slurm_key, uid=slurm.pw_uid, gid=slurm.pw_gid)
    config.write(files, SLURM_CONF_DIR)
    _ensure_owned_dir(SLURM_RUN_DIR, slurm.pw_uid, slurm.pw_gid)
    _ensure_owned_dir(Path(spec.state_save_location), slurm.pw_uid, slurm.pw_gid)
    _save_powersave_env(env, spec, slurm.pw_uid, slurm.pw_gid)
    if not _is_ip_address(addr):
        _point_name_at_loopback(addr, HOSTS_FILE)
    return ["slurmctld", "-D"]


def prepare_node(env: Mapping[str, str], node_name: str) -> list[str]:
    """Install the key; the configless slurmd command line for ``node_name``."""
    node_name = node_name.strip()
    if not node_name or not all(c.isalnum() or c == "-" for c in node_name):
        raise SetupError(
            f"node name {node_name!r}: give it as the argument or in {NODE_NAME_ENV} "
            "(letters, digits and '-', e.g. gpu-1)"
        )
    server = env.get(CONTROLLER_ENV, "").strip()
    if not server:
        raise SetupError(f"{CONTROLLER_ENV} is empty: it must name the controller as host[:port]")
    host, _, port = server.partition(":")
    if not host or (port and not port.isdigit()):
        raise SetupError(f"{CONTROLLER_ENV} = {server!r} is not host[:port]")
    placeholders = env.get(PLACEHOLDER_GPUS_ENV, "").strip()
    if placeholders and not (placeholders.isdigit() and int(placeholders) <= 64):
        raise SetupError(f"{PLACEHOLDER_GPUS_ENV} = {placeholders!r}: give a count from 0 to 64")
    slurm_key = key.load_key(env)
    slurm = _slurm_user()
    key.install_key(slurm_key, uid=0, gid=0)
    _ensure_owned_dir(SLURM_RUN_DIR, slurm.pw_uid, slurm.pw_gid)
    Path("/var/spool/slurmd").mkdir(parents=True, exist_ok=True)
    for index in range(int(placeholders or 0)):
        _make_placeholder_device(Path(f"{LOCAL_GPU_DEVICE_PREFIX}{index}"))
    _open_fuse_to_jobs()
    _write_env_file(env, NODE_ENV_FILE, 0, 0)
    job_reports.make_spool(REPORT_SPOOL)
    guard = env.get(metadata_guard.GUARD_ENV, "").strip()
    if guard:
        done = metadata_guard.apply(guard, env.get(IMDS_URL_ENV, "").strip(), job_user=JOB_USER)
        print(f"relion-spot entrypoint: {done}", file=sys.stderr, flush=True)
    # -b: report this start as the boot time. Node containers share the host's boot time, and
    # slurmctld ignores a resumed node whose boot predates the resume request.
    return [
        "slurmd",
        "-D",
        "-b",
        "-N",
        node_name,
        "--conf-server",
        f"{host}:{port or SLURMCTLD_PORT}",
    ]


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _point_name_at_loopback(name: str, hosts: Path) -> None:
    """Make the controller's DNS name mean this container, inside this container.

    Commands run here (the power-save programs' scontrol, the job intake's sbatch) reach
    slurmctld through SlurmctldHost's address. In the cloud that is a Cloud Map name, which a new
    task may not own yet (registration lags the start) or which may still point at the task it
    replaced. Loopback is always this slurmctld. The line goes first (the first match wins) and
    is replaced on every start; every other line is kept.
    """
    marker = "# relion-spot: the controller's own name"
    try:
        lines = hosts.read_text().splitlines() if hosts.exists() else []
        kept = [line for line in lines if not line.endswith(marker)]
        hosts.write_text("\n".join([f"127.0.0.1 {name} {marker}", *kept]) + "\n")
    except OSError as err:
        print(
            f"relion-spot entrypoint: cannot map {name} to loopback in {hosts} ({err.strerror});"
            " commands in this container will resolve it through DNS",
            file=sys.stderr,
        )


def _slurm_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SLURM_USER)
    except KeyError:
        raise SetupError(
            f"no user {SLURM_USER!r} here: this entrypoint runs inside the Slurm image"
        ) from None


def _make_placeholder_device(path: Path) -> None:
    """A character device standing in for a GPU (Slurm insists gres files are devices): a twin of
    /dev/null, so nothing that opens it can do harm."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return
    null = os.stat("/dev/null")
    os.mknod(path, 0o666 | stat.S_IFCHR, null.st_rdev)


def _own_address(host: str) -> str:
    try:
        addr = socket.gethostbyname(host)
    except OSError as err:
        raise SetupError(
            f"cannot resolve this container's hostname {host!r} ({err}); set {CONTROLLER_ADDR_ENV}"
        ) from None
    if addr.startswith("127."):
        raise SetupError(
            f"hostname {host!r} resolves to loopback {addr}, which nodes cannot reach; "
            f"set {CONTROLLER_ADDR_ENV}"
        )
    return addr


def _ensure_owned_dir(path: Path, uid: int, gid: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    info = path.stat()
    if (info.st_uid, info.st_gid) == (uid, gid):
        return
    try:
        os.chown(path, uid, gid)
    except OSError as err:
        raise SetupError(
            f"directory {path} belongs to uid {info.st_uid}, and cannot be given to "
            f"the slurm user (uid {uid}): {err.strerror}"
        ) from None


def _save_powersave_env(env: Mapping[str, str], spec: ClusterSpec, uid: int, gid: int) -> None:
    RUNTIME_DIR.mkdir(parents=True, exist_ok=True)
    CLUSTER_SPEC_FILE.write_text(spec.to_json() + "\n")
    CLUSTER_SPEC_FILE.chmod(0o644)
    _write_env_file(env, POWERSAVE_ENV_FILE, uid, gid)


def _write_env_file(env: Mapping[str, str], path: Path, uid: int, gid: int) -> None:
    """Shell-quoted KEY=value lines of the project's and AWS's variables, owner-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{name}={shlex.quote(value)}"
        for name, value in sorted(env.items())
        if name.startswith(POWERSAVE_ENV_PREFIXES) and name.isidentifier()
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write("".join(f"{line}\n" for line in lines))
        if os.geteuid() == 0:
            os.fchown(out.fileno(), uid, gid)


FUSE_DEVICE = Path("/dev/fuse")


def _open_fuse_to_jobs() -> None:
    """Jobs run RELION with ``apptainer exec`` as the job user, which mounts the SIF with
    squashfuse: /dev/fuse must be usable by that user (mode 0666, the usual host default; some
    hosts pass it in 0600 root)."""
    if FUSE_DEVICE.exists():
        FUSE_DEVICE.chmod(0o666)


def _reset_signals() -> None:
    """Hand the daemon a clean signal state: exec keeps ignored signals and the blocked mask.

    Python ignores SIGPIPE and SIGXFSZ; a parent such as slurmscriptd (ResumeProgram) blocks
    signals; a shell that started us in the background ignores SIGINT and SIGQUIT. Any of them
    would leave slurmd deaf to signals it relies on, SIGTERM included. Every signal that may be
    reset goes back to its default.
    """
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) is signal.SIG_IGN or sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):  # signals the runtime reserves (e.g. 32, 33) cannot be set
            continue
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


if __name__ == "__main__":
    sys.exit(main())
