"""slurm.conf / gres.conf / cgroup.conf rendered from settings, pinned by golden files."""

from __future__ import annotations

import re

import pytest

from relion_spot import catalog
from relion_spot.settings import Settings
from relion_spot.slurm import config
from relion_spot.slurm.spec import (
    LOCAL_CLOUD,
    ClusterSpec,
    SpecError,
    partition_for_types,
    spec_from_settings,
)

from .golden import check_golden

SETTINGS = Settings(
    name="relion-spot", gpus=(1, 4, 8), max_nodes=4, cpu_max_nodes=1, node_idle_seconds=600
)
HOST, ADDR = "slurmctld", "10.0.0.10"


def rendered(gpu_count: int, **overrides: object) -> dict[str, str]:
    spec = spec_from_settings(SETTINGS, gpu_count, **overrides)
    return config.render(spec, controller_host=HOST, controller_addr=ADDR)


def conf_values(text: str) -> dict[str, str]:
    """Top-level Key=Value lines of slurm.conf (node and partition lines excluded)."""
    values = {}
    for line in text.splitlines():
        if line.startswith(("#", "NodeName=", "PartitionName=")) or "=" not in line:
            continue
        name, _, value = line.partition("=")
        values[name] = value
    return values


@pytest.mark.parametrize("gpu_count", [1, 4, 8])
@pytest.mark.parametrize("name", config.CONFIG_FILES)
def test_rendered_config_matches_golden(gpu_count: int, name: str) -> None:
    check_golden(f"gpu{gpu_count}.{name}", rendered(gpu_count)[name])


@pytest.mark.parametrize("name", ["slurm.conf", "gres.conf"])
def test_local_cloud_config_matches_golden(name: str) -> None:
    check_golden(f"gpu4-local.{name}", rendered(4, **LOCAL_CLOUD)[name])


@pytest.mark.parametrize("gpu_count", [1, 4, 8])
def test_nodes_follow_the_catalog(gpu_count: int) -> None:
    """Node declarations are derived from the instance catalog, not typed in."""
    text = rendered(gpu_count)["slurm.conf"]
    types = SETTINGS.gpu_types[gpu_count]
    specs = [catalog.INSTANCE_TYPES[t] for t in types]
    node = re.search(r"^NodeName=gpu-\[1-(\d+)\] (.*)$", text, re.M)
    assert node, text
    assert int(node.group(1)) == SETTINGS.max_nodes
    fields = dict(f.split("=", 1) for f in node.group(2).split())
    assert fields["CPUs"] == str(min(s.vcpus for s in specs))
    assert fields["Gres"] == f"gpu:{gpu_count}"
    assert fields["Features"].split(",") == list(types)
    assert fields["State"] == "CLOUD"
    real_memory = int(fields["RealMemory"])
    assert 0.85 * min(s.memory_gib for s in specs) * 1024 < real_memory
    assert real_memory < min(s.memory_gib for s in specs) * 1024
    gres = rendered(gpu_count)["gres.conf"]
    devices = "/dev/nvidia0" if gpu_count == 1 else f"/dev/nvidia[0-{gpu_count - 1}]"
    assert f"NodeName=gpu-[1-{SETTINGS.max_nodes}] Name=gpu File={devices}" in gres


def test_settings_reach_the_config() -> None:
    settings = Settings(name="lab-x", gpus=(4,), max_nodes=7, cpu_max_nodes=2,
                        node_idle_seconds=1234)  # fmt: skip
    spec = spec_from_settings(settings, 4)
    text = config.render(spec, controller_host="ctl", controller_addr="ctl.lab.internal")
    values = conf_values(text["slurm.conf"])
    assert values["ClusterName"] == "lab-x-gpu4"
    assert values["SlurmctldHost"] == "ctl(ctl.lab.internal)"
    assert values["SuspendTime"] == "1234"
    assert "PartitionName=gpu Nodes=gpu-[1-7] Default=YES" in text["slurm.conf"]
    assert "PartitionName=cpu Nodes=cpu-[1-2] Default=NO" in text["slurm.conf"]
    assert values["TreeWidth"] == "9"


def test_deliberate_choices_are_present() -> None:
    values = conf_values(rendered(1)["slurm.conf"])
    assert values["AuthType"] == "auth/slurm"
    assert values["CredType"] == "cred/slurm"
    assert set(values["SlurmctldParameters"].split(",")) == {
        "enable_configless",
        "idle_on_node_suspend",
    }
    assert values["JobRequeue"] == "1"
    assert values["ReturnToService"] == "2"
    assert values["ResumeProgram"].endswith("/bin/resume")
    assert values["SuspendProgram"].endswith("/bin/suspend")
    assert values["ResumeFailProgram"].endswith("/bin/resume-fail")
    assert "SlurmdParameters" not in values
    assert conf_values(rendered(1, **LOCAL_CLOUD)["slurm.conf"])["SlurmdParameters"] == (
        "config_overrides"
    )


def test_powersave_wrappers_exist_and_are_executable() -> None:
    spec = spec_from_settings(SETTINGS, 1)
    values = conf_values(config.render(spec, controller_host=HOST, controller_addr=ADDR)[
        "slurm.conf"])  # fmt: skip
    modules = {
        "ResumeProgram": "powersave.resume ",
        "SuspendProgram": "powersave.suspend ",
        "ResumeFailProgram": "powersave.resume_fail ",
        "PrologSlurmctld": "slurm.wait_for_nodes\n",
    }
    for key, module in modules.items():
        wrapper = config.TEMPLATE_DIR / "bin" / values[key].rsplit("/", 1)[1]
        assert wrapper.is_file(), wrapper
        assert wrapper.stat().st_mode & 0o111, f"{wrapper} is not executable"
        assert f"-m relion_spot.{module}" in wrapper.read_text()


def test_spec_round_trips_through_json() -> None:
    spec = spec_from_settings(SETTINGS, 8, **LOCAL_CLOUD)
    assert ClusterSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"cluster_name": "a", "partitions": [], "suspend_time": 60, "colour": 1}', "colour"),
        ('{"cluster_name": "a", "suspend_time": 60}', "partitions must be a list"),
        ('{"cluster_name": "a", "partitions": [], "suspend_time": 60}', "at least one"),
    ],
)
def test_bad_spec_json_is_named(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ClusterSpec.from_json(text)


def test_bad_spec_values_are_named() -> None:
    good = spec_from_settings(SETTINGS, 1)
    data = good.to_json().replace('"suspend_time": 600', '"suspend_time": 0')
    with pytest.raises(SpecError, match="suspend_time = 0"):
        ClusterSpec.from_json(data)
    data = good.to_json().replace('"default": false', '"default": true')
    with pytest.raises(SpecError, match="exactly one must be the default"):
        ClusterSpec.from_json(data)
    data = good.to_json().replace('"relion-spot-gpu1"', '"bad name!"')
    with pytest.raises(SpecError, match="cluster_name = 'bad name!'"):
        ClusterSpec.from_json(data)


def test_gpu_count_outside_the_settings_is_refused() -> None:
    with pytest.raises(SpecError, match=r"gpu_count = 4 .* \(1,\)"):
        spec_from_settings(Settings(gpus=(1,)), 4)


def test_a_group_mixing_gpu_counts_is_refused() -> None:
    with pytest.raises(SpecError, match="different GPU counts"):
        partition_for_types(
            name="gpu", instance_types=("g5.xlarge", "g5.12xlarge"), max_nodes=2, default=True
        )
    with pytest.raises(SpecError, match=r"unknown instance types \[.g5.nope.\]"):
        partition_for_types(name="gpu", instance_types=("g5.nope",), max_nodes=2, default=True)


@pytest.mark.parametrize(
    ("host", "addr", "message"),
    [
        ("ctl.example.internal", "10.0.0.1", "short hostname"),
        ("ctl", "10.0.0.1; rm", "not a host name"),
        ("", "10.0.0.1", "controller_host"),
    ],
)
def test_bad_controller_names_are_refused(host: str, addr: str, message: str) -> None:
    spec = spec_from_settings(SETTINGS, 1)
    with pytest.raises(config.RenderError, match=message):
        config.render(spec, controller_host=host, controller_addr=addr)
