"""Settings parsing: every accepted form, and one clear error for every bad value."""

from __future__ import annotations

import pytest

from relion_spot import catalog
from relion_spot.settings import Settings, SettingsError, from_context


def test_defaults_are_the_canonical_one_gpu_cluster() -> None:
    settings = from_context({})
    assert settings == Settings(gpu_types={1: ("g5.xlarge", "g6.xlarge")})
    assert settings.gpus == (1,)
    assert settings.keep_data is True
    assert settings.cluster_name(1) == "relion-spot-gpu1"


def test_several_gpu_counts_side_by_side_with_their_types() -> None:
    settings = from_context({"gpus": "1,4,8"})
    assert settings.gpus == (1, 4, 8)
    assert settings.gpu_types == {
        1: ("g5.xlarge", "g6.xlarge"),
        4: ("g5.12xlarge", "g6.12xlarge"),
        8: ("g5.48xlarge", "g6.48xlarge"),
    }
    for count, types in settings.gpu_types.items():
        for name in types:
            spec = catalog.INSTANCE_TYPES[name]
            assert spec.gpus == count
            assert spec.gpu_memory_gib >= 22


def test_every_setting_parses_from_context_strings() -> None:
    settings = from_context(
        {
            "name": "lab-a",
            "region": "eu-west-1",
            "azs": "eu-west-1a,eu-west-1b",
            "gpus": "4",
            "gpu_types_4": "g5.12xlarge",
            "max_nodes": "8",
            "cpu_types": "m6i.large",
            "cpu_max_nodes": "2",
            "keep_data": "false",
            "controller_capacity": "on-demand",
            "egress": "nat-gateway",
            "project": "cryo lab",
            "node_idle_seconds": "300",
            "log_retention_days": "90",
            "account": "123456789012",
            "az_count": "2",
        }
    )
    assert settings.name == "lab-a"
    assert settings.azs == ("eu-west-1a", "eu-west-1b")
    assert settings.gpu_types == {4: ("g5.12xlarge",)}
    assert (settings.max_nodes, settings.cpu_max_nodes) == (8, 2)
    assert settings.cpu_types == ("m6i.large",)
    assert settings.keep_data is False
    assert settings.controller_capacity == "on-demand"
    assert settings.egress == "nat-gateway"
    assert settings.node_idle_seconds == 300
    assert settings.log_retention_days == 90
    assert settings.account == "123456789012"


def test_budget_and_notifications_are_off_unless_set() -> None:
    assert (Settings().monthly_budget_usd, Settings().notify_email) == (None, None)
    settings = from_context({"monthly_budget_usd": "250.50", "notify_email": "lab@example.org"})
    assert settings.monthly_budget_usd == 250.5
    assert settings.notify_email == "lab@example.org"


def test_stage_buckets_are_a_list_of_names_and_none_by_default() -> None:
    assert from_context({}).stage_buckets == ()
    assert from_context({"stage_buckets": ""}).stage_buckets == ()
    assert from_context({"stage_buckets": "lab-data, lab.raw.2026"}).stage_buckets == (
        "lab-data",
        "lab.raw.2026",
    )


def test_a_kept_file_system_is_adopted_by_id_and_never_deleted() -> None:
    assert from_context({}).adopt_file_system_id is None
    for fs_id in ("fs-01234567", "fs-0123456789abcdef0"):
        assert from_context({"adopt_file_system_id": fs_id}).adopt_file_system_id == fs_id
    with pytest.raises(SettingsError) as caught:
        from_context({"adopt_file_system_id": "fs-01234567", "keep_data": "false"})
    assert str(caught.value) == (
        "setting 'keep_data' = 'false' is not valid: true while adopt_file_system_id is set: an "
        "adopted file system is never deleted by cdk destroy (the stack does not own it); leave "
        "keep_data out"
    )


def test_cdk_own_context_keys_are_not_settings() -> None:
    settings = from_context(
        {
            "@aws-cdk/aws-ec2:restrictDefaultSecurityGroup": True,
            "aws:cdk:enable-path-metadata": True,
            "availability-zones:account=123456789012:region=us-east-1": ["us-east-1a"],
            "acknowledged-issue-numbers": [1],
        }
    )
    assert settings.gpus == (1,)


BAD = [
    ("gpus", "0", "1, 4 or 8"),
    ("gpus", "2", "1, 4 or 8"),
    ("gpus", "3", "1, 4 or 8"),
    ("gpus", "-1", "1, 4 or 8"),
    ("gpus", "four", "1, 4 or 8"),
    ("gpus", "100", "1, 4 or 8"),
    ("gpus", "1,1", "each count once"),
    ("gpus", "", "1, 4 or 8"),
    ("gpu_types_1", "m5.xlarge", "with 1 GPU(s)"),
    ("gpu_types_1", "g5.12xlarge", "with 1 GPU(s)"),
    ("gpu_types_4", "p9.huge", "with 4 GPU(s)"),
    ("cpu_types", "g5.xlarge", "without GPUs"),
    ("max_nodes", "0", "from 1 to 256"),
    ("max_nodes", "-3", "from 1 to 256"),
    ("max_nodes", "many", "from 1 to 256"),
    ("cpu_max_nodes", "0", "from 1 to 256"),
    ("keep_data", "maybe", "true or false"),
    ("egress", "nat", "public, nat-instance, nat-gateway"),
    ("controller_capacity", "reserved", "spot, on-demand"),
    ("name", "Relion_Spot", "lowercase letters"),
    ("region", "mars-1", "AWS region"),
    ("azs", "us-east-1a", "2 to 6 distinct"),
    ("azs", "eu-west-1a,eu-west-1b", "of region us-east-1"),
    ("az_count", "1", "from 2 to 6"),
    ("node_idle_seconds", "5", "from 60 to 86400"),
    ("controller_idle_seconds", "60", "from 300 to 86400"),
    ("log_retention_days", "10", "one of 1, 3, 5"),
    ("account", "12345", "12-digit"),
    ("relion_image", "nvcr.io/hpc/relion:5.0", "docker://registry/name:tag"),
    ("relion_image", "docker://x/y;rm -rf /", "docker://registry/name:tag"),
    ("relion_image", "def:relion.def:a:b", "def:/path/recipe.def"),
    ("relion_image", "docker-archive:relative.tar", "docker-archive:/path.tar"),
    ("monthly_budget_usd", "0", "above 0"),
    ("monthly_budget_usd", "-5", "above 0"),
    ("monthly_budget_usd", "lots", "above 0"),
    ("monthly_budget_usd", "12.345", "at most two decimals"),
    ("monthly_budget_usd", "1e3", "above 0"),
    ("monthly_budget_usd", "2000000", "at most 1,000,000"),
    ("notify_email", "lab", "e-mail address"),
    ("notify_email", "a@b,c@d.org", "e-mail address"),
    ("adopt_file_system_id", "fs-123", "an EFS file system id"),
    ("adopt_file_system_id", "fs-0123456789ABCDEF0", "an EFS file system id"),
    ("adopt_file_system_id", "fsap-0123456789abcdef0", "an EFS file system id"),
    (
        "adopt_file_system_id",
        "arn:aws:elasticfilesystem:us-east-1:1:file-system/fs-01234567",
        "an EFS file system id",
    ),
    ("stage_buckets", "My_Bucket", "S3 bucket names"),
    ("stage_buckets", "lab-*", "no wildcards"),
    ("stage_buckets", "ab", "3-63 lowercase"),
    ("stage_buckets", "lab..data", "S3 bucket names"),
    ("stage_buckets", "192.168.1.10", "S3 bucket names"),
    ("stage_buckets", "lab-data,lab-data", "each bucket once"),
    ("stage_buckets", "lab-data,,lab-raw", "S3 bucket names"),
    ("efs_throughput", "fast", "one of elastic, bursting, provisioned"),
    ("efs_provisioned_mibps", "0", "from 1 to 1024"),
    ("efs_provisioned_mibps", "50", "only with efs_throughput=provisioned"),
]


@pytest.mark.parametrize(
    "image",
    [
        "docker://123456789012.dkr.ecr.us-east-1.amazonaws.com/relion:5.0.1-cuda12",
        "def:/data/images/relion.def:/data/images/cuda12.args",
        "/containers/relion-5.0.1.sif",
        "oci-archive:/data/images/relion.tar",
    ],
)
def test_a_lab_may_name_its_own_relion_image(image: str) -> None:
    assert from_context({"relion_image": image}).relion_image == image


@pytest.mark.parametrize(("key", "value", "accepted"), BAD)
def test_bad_value_names_setting_value_and_what_is_accepted(
    key: str, value: str, accepted: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        from_context({key: value})
    message = str(caught.value)
    assert f"'{key}'" in message
    assert repr(value) in message
    assert accepted in message


def test_efs_throughput_modes_and_the_provisioned_rate() -> None:
    assert Settings().efs_throughput == "elastic"
    assert from_context({"efs_throughput": "bursting"}).efs_throughput == "bursting"
    chosen = from_context({"efs_throughput": "provisioned", "efs_provisioned_mibps": "64"})
    assert (chosen.efs_throughput, chosen.efs_provisioned_mibps) == ("provisioned", 64)
    with pytest.raises(SettingsError, match="efs_throughput=provisioned needs a rate"):
        from_context({"efs_throughput": "provisioned"})


def test_misspelt_setting_suggests_the_right_one() -> None:
    with pytest.raises(SettingsError) as caught:
        from_context({"gpu": "4"})
    assert "setting 'gpu'" in str(caught.value)
    assert "did you mean 'gpus'?" in str(caught.value)


def test_gpu_types_for_an_undeployed_count_are_still_validated() -> None:
    with pytest.raises(SettingsError, match="gpu_types_8"):
        from_context({"gpus": "1", "gpu_types_8": "g5.xlarge"})
