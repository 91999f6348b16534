"""The node bootstrap template: every placeholder filled, valid bash, shellcheck-clean."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from string import Template

import pytest

from relion_spot import tags
from relion_spot.node import bootstrap, stage_credentials

VALUES = {
    "cluster_name": "lab-1gpu",
    "file_system_id": "fs-0123456789abcdef0",
    "data_access_point_id": "fsap-0123456789abcdef0",
    "containers_access_point_id": "fsap-0fedcba9876543210",
    "slurm_image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/cdk-hnb659fds:abc123",
    "controller": "slurmctld.lab-1gpu.relion-spot.local:6817",
    "key_parameter_arn": (
        "arn:aws:ssm:us-east-1:123456789012:parameter/relion-spot/lab-1gpu/slurm-key"
    ),
    "spot_events_table": "",
    "intake_table": "lab-1gpu-IntakeTable-ABC123",
    "stage_read_role": "arn:aws:iam::123456789012:role/lab-1gpu-StageReaderRole-AbC",
    "exchange_role": "arn:aws:iam::123456789012:role/lab-1gpu-ResultsExchangeJobRole-DeF",
    "exchange_bucket": "lab-1gpu-resultsexchangebucket-0123abcd",
}


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bootstrap") / "user-data.sh"
    path.write_text(bootstrap.render(**VALUES))
    return path


def test_the_template_names_exactly_the_documented_placeholders() -> None:
    text = bootstrap.TEMPLATE_PATH.read_text()
    identifiers = set(Template(text).get_identifiers())
    assert identifiers == {*bootstrap.PLACEHOLDERS, *bootstrap.FILLED_HERE}
    header = text.split("set -euo pipefail")[0]
    for name in identifiers:
        assert re.search(rf"^#   {name} ", header, re.MULTILINE), f"{name} is not documented"


def test_rendered_script_carries_the_values_and_no_placeholder(script: Path) -> None:
    text = script.read_text()
    for value in VALUES.values():
        assert value in text
    assert f"readonly NODE_TAG_KEY='{tags.NODE}'" in text
    assert "${cluster_name}" not in text and "$$" not in text
    assert "docker run -d --name" in text and "node >/dev/null" in text
    assert "tls,iam,accesspoint=" in text
    assert "-m relion_spot.node.spot_watcher" in text


def test_slurmd_is_told_where_the_key_parameter_is(script: Path) -> None:
    """The container reads the key from the variable relion_spot.slurm.key reads."""
    from relion_spot.slurm.key import KEY_PARAMETER_ARN_ENV

    arn = VALUES["key_parameter_arn"]
    assert f"readonly KEY_PARAMETER_ARN='{arn}'" in script.read_text()
    assert f'-e {KEY_PARAMETER_ARN_ENV}="$KEY_PARAMETER_ARN"' in script.read_text()


def test_gpu_nodes_start_the_cloudwatch_agent_with_the_clusters_dimension(script: Path) -> None:
    text = script.read_text()
    written = re.search(r"<<'AGENT_CONFIG'.*?\n(.*?)\nAGENT_CONFIG\n", text, re.DOTALL)
    assert written is not None, "the agent config is written by a quoted heredoc"
    config = json.loads(written.group(1))
    metrics = config["metrics"]
    assert metrics["namespace"] == bootstrap.GPU_METRICS_NAMESPACE == "CWAgent"
    assert metrics["append_dimensions"] == {
        "InstanceId": "${aws:InstanceId}",
        "InstanceType": "${aws:InstanceType}",
    }, "the agent's own placeholders pass the renderer untouched"
    gpu = metrics["metrics_collected"]["nvidia_gpu"]
    assert gpu["append_dimensions"] == {"Cluster": VALUES["cluster_name"]}
    assert {"utilization_gpu", "memory_used"} <= set(gpu["measurement"])
    assert list(metrics["metrics_collected"]) == ["nvidia_gpu"], "GPU metrics only: each bills"
    assert 'amazon-cloudwatch-agent-ctl" -a fetch-config -m ec2 -s' in text
    start = text.index("start_gpu_metrics; then")
    assert 'if [ "${#gpu_args[@]}" -eq 0 ]; then' in text[:start], "only where GPUs were found"
    assert "die" not in text[start:], "a node without GPU metrics still runs jobs"


@pytest.mark.parametrize("gpus", [True, False])
def test_the_agent_step_writes_its_config_and_starts_the_agent(
    script: Path, tmp_path: Path, gpus: bool
) -> None:
    """Step 8 run for real by bash, against a stand-in agent that records how it was called."""
    step = "# --- 8." + script.read_text().split("# --- 8.", 1)[1]
    home = tmp_path / "agent"
    (home / "bin").mkdir(parents=True)
    ctl = home / "bin" / "amazon-cloudwatch-agent-ctl"
    ctl.write_text(f'#!/bin/bash\necho "$*" >"{tmp_path}/ctl-args"\n')
    ctl.chmod(0o755)
    prelude = (
        'set -euo pipefail\nNODE_NAME=gpu-1\nlog() { echo "$*" >&2; }\n'
        f"gpu_args=({'--gpus all' if gpus else ''})\n"
    )
    body = step.replace("/opt/aws/amazon-cloudwatch-agent", str(home))
    done = subprocess.run(
        ["bash", "-c", prelude + body], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    config = home / "etc" / "relion-spot-gpu.json"
    if not gpus:
        assert not config.exists() and "no GPU metrics" in done.stderr
        return
    written = json.loads(config.read_text())
    assert written["metrics"]["metrics_collected"]["nvidia_gpu"]["append_dimensions"] == {
        "Cluster": VALUES["cluster_name"]
    }
    assert written["metrics"]["append_dimensions"]["InstanceId"] == "${aws:InstanceId}"
    args = (tmp_path / "ctl-args").read_text().split()
    assert args == ["-a", "fetch-config", "-m", "ec2", "-s", "-c", f"file:{config}"]


def test_rendered_script_is_valid_bash(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_rendered_script_passes_shellcheck(script: Path) -> None:
    done = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", str(script)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cluster_name": ""}, "cluster_name = '', need a non-empty string"),
        ({"controller": "x'; rm -rf /"}, "contains a quote or newline"),
        ({"extra": "1"}, "unknown ['extra']"),
    ],
)
def test_bad_values_are_refused(change: dict[str, str], message: str) -> None:
    with pytest.raises(bootstrap.BootstrapError, match=re.escape(message)):
        bootstrap.render(**{**VALUES, **change})


def test_a_missing_value_is_refused() -> None:
    values = dict(VALUES)
    del values["slurm_image"]
    with pytest.raises(bootstrap.BootstrapError, match=re.escape("missing ['slurm_image']")):
        bootstrap.render(**values)


def test_the_node_container_gets_what_apptainer_needs_and_the_embedded_cloud_the_same(
    script: Path,
) -> None:
    """The embedded cloud starts its node containers with the bootstrap's Apptainer flags."""
    from relion_spot.slurm.local import APPTAINER_ARGS

    code = "\n".join(
        line for line in script.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    assert " ".join(APPTAINER_ARGS) in code
    assert "--privileged" not in code and "--cap-add" not in code


IMDS_RULE = (
    "-p tcp -d 169.254.169.254 --dport 80 -m owner ! --uid-owner 0"
    " -j REJECT --reject-with tcp-reset"
)


@pytest.mark.parametrize(
    ("present", "insert_fails", "calls", "status"),
    [
        (False, False, [f"-w 5 -C OUTPUT {IMDS_RULE}", f"-w 5 -I OUTPUT 1 {IMDS_RULE}"], 0),
        (True, False, [f"-w 5 -C OUTPUT {IMDS_RULE}"], 0),
        (False, True, [f"-w 5 -C OUTPUT {IMDS_RULE}", f"-w 5 -I OUTPUT 1 {IMDS_RULE}"], 1),
    ],
)
def test_the_host_shuts_the_metadata_service_to_jobs_before_slurmd_starts(
    script: Path, tmp_path: Path, present: bool, insert_fails: bool, calls: list, status: int
) -> None:
    """Step 5 run for real by bash against a stand-in iptables: the rule is added once (not
    again when present), a failure stops the bootstrap, and it all happens before the container
    that runs slurmd is started, which is told to verify the rule before slurmd starts."""
    text = script.read_text()
    step = "# --- 5." + text.split("# --- 5.", 1)[1].split("# --- 6.", 1)[0]
    log = tmp_path / "iptables-calls"
    prelude = (
        "set -euo pipefail\n"
        'log() { echo "$*" >&2; }\ndie() { log "FAILED: $*"; exit 1; }\n'
        f'iptables() {{ echo "$*" >>"{log}"; case "$3" in'
        f" -C) return {0 if present else 1};; -I) return {1 if insert_fails else 0};; esac; }}\n"
    )
    done = subprocess.run(["bash", "-c", prelude + step], capture_output=True, text=True)
    assert done.returncode == status, done.stderr
    assert log.read_text().splitlines() == calls
    if status:
        assert "FAILED: could not shut the metadata service" in done.stderr
    assert text.index("# --- 5.") < text.index("docker run -d")
    assert "-e RELION_SPOT_METADATA_GUARD=verify" in text


EXCHANGE = "-e RELION_SPOT_EXCHANGE_ROLE=arn:x -e RELION_SPOT_EXCHANGE_BUCKET=exchange-b"


@pytest.mark.parametrize(
    ("partition", "role", "volume", "extra"),
    [
        ("gpu", "", "/containers:/containers:ro", ""),
        ("gpu", "arn:r", "/containers:/containers:ro", "-e RELION_SPOT_STAGE_READ_ROLE=arn:r"),
        ("cpu", "", "/containers:/containers", f"--security-opt systempaths=unconfined {EXCHANGE}"),
        (
            "cpu",
            "arn:r",
            "/containers:/containers",
            "-e RELION_SPOT_STAGE_READ_ROLE=arn:r --security-opt systempaths=unconfined "
            + EXCHANGE,
        ),
    ],
)
def test_what_each_partitions_node_container_gets(
    script: Path, partition: str, role: str, volume: str, extra: str
) -> None:
    """Run by bash as the bootstrap runs it: a GPU node sees the image cache read-only (only the
    CPU partition's image job writes it), never gets the exchange's job role and, with
    stage_buckets, serves a Class3D's dataset the reader's session; a CPU node may build images,
    with stage_buckets serves its staging jobs the reader's session, and always serves its
    import and export jobs the exchange job role's.
    (The embedded cloud's node containers follow the same rule:
    tests/security/test_attack_matrix.py.)"""
    text = script.read_text()
    block = text[text.index("partition_args=()") : text.index("docker run -d --name")]
    done = subprocess.run(
        ["bash", "-c", block + 'echo "$containers_volume|${partition_args[*]}"'],
        env={
            "PARTITION": partition,
            "STAGE_READ_ROLE": role,
            "EXCHANGE_ROLE": "arn:x",
            "EXCHANGE_BUCKET": "exchange-b",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == f"{volume}|{extra}"
    assert '-v "$containers_volume"' in text


def test_the_exchange_is_named_to_the_node_as_the_broker_reads_it(script: Path) -> None:
    """The rendered script holds the exchange's job role (import and export jobs) and the
    bucket in the variables the CPU block passes on; both are required (every cluster has an
    exchange)."""
    text = script.read_text()
    assert f"readonly EXCHANGE_ROLE='{VALUES['exchange_role']}'" in text
    assert f"readonly EXCHANGE_BUCKET='{VALUES['exchange_bucket']}'" in text
    assert '-e "RELION_SPOT_EXCHANGE_ROLE=$EXCHANGE_ROLE"' in text
    assert '-e "RELION_SPOT_EXCHANGE_BUCKET=$EXCHANGE_BUCKET"' in text
    # The names the broker (and the entrypoint that starts it) reads.
    assert stage_credentials.EXCHANGE_ROLE_ENV == "RELION_SPOT_EXCHANGE_ROLE"
    assert stage_credentials.EXCHANGE_BUCKET_ENV == "RELION_SPOT_EXCHANGE_BUCKET"
    for name in ("exchange_role", "exchange_bucket"):
        with pytest.raises(bootstrap.BootstrapError, match=re.escape(f"{name} = ''")):
            bootstrap.render(**{**VALUES, name: ""})
