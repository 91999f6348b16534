"""Turn a synthesized template's IAM policies into concrete documents an IAM simulator can read.

CloudFormation intrinsics (Ref, Fn::GetAtt, Fn::Join, Fn::Sub, cross-stack outputs) become fake
but well-formed ARNs and ids, derived from the logical id so that a test can name the same
resource the same way. Only what the synthesized IAM policies use is supported; anything else
raises, so a new construct cannot slip past the matrix with an unresolved value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

ACCOUNT = "111111111111"
PARTITION = "aws"
STREAM_LABEL = "2026-01-01T00:00:00.000"
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


def _hex(text: str, length: int = 17) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class RolePolicies:
    logical_id: str
    arn: str
    policies: list[dict[str, Any]]
    """``{"name", "policy"}`` per policy attached to the role, as the simulator takes them."""
    managed_policy_arns: list[str]
    """AWS managed policies (by ARN; their documents are not in the template)."""


class TemplateResolver:
    """Resolves the intrinsics of one stack's template; ``templates`` are all stacks of the app
    (for cross-stack references), by stack name."""

    def __init__(self, templates: Mapping[str, dict], stack_name: str, region: str) -> None:
        self.templates = templates
        self.stack_name = stack_name
        self.template = templates[stack_name]
        self.region = region
        self.resources: dict[str, dict] = self.template["Resources"]

    # --- resources by kind -------------------------------------------------------------------

    def logical_ids(self, resource_type: str, prefix: str = "") -> list[str]:
        return sorted(
            k
            for k, v in self.resources.items()
            if v["Type"] == resource_type and k.startswith(prefix)
        )

    def one(self, resource_type: str, prefix: str) -> str:
        found = self.logical_ids(resource_type, prefix)
        if len(found) != 1:
            raise LookupError(f"expected one {resource_type} named {prefix}*, found {found}")
        return found[0]

    # --- intrinsics --------------------------------------------------------------------------

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1 or not next(iter(value)).startswith(("Ref", "Fn::")):
            return {k: self.resolve(v) for k, v in value.items()}
        (name, argument), *_ = value.items()
        if name == "Ref":
            return self.ref(argument)
        if name == "Fn::GetAtt":
            logical_id, attribute = (
                argument if isinstance(argument, list) else argument.split(".", 1)
            )
            return self.get_att(logical_id, attribute)
        if name == "Fn::Join":
            separator, parts = argument
            return separator.join(str(p) for p in self.resolve(parts))
        if name == "Fn::Sub":
            return self._sub(argument)
        if name == "Fn::Select":
            index, items = argument
            return self.resolve(items)[int(self.resolve(index))]
        if name == "Fn::Split":
            separator, text = argument
            return str(self.resolve(text)).split(separator)
        if name == "Fn::GetStackOutput":
            return self._output(argument["StackName"], argument["OutputName"])
        if name == "Fn::ImportValue":
            return self._import(self.resolve(argument))
        raise NotImplementedError(f"{self.stack_name}: intrinsic {name} is not resolved here")

    def _sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        resolved_vars = {k: self.resolve(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in resolved_vars:
                return str(resolved_vars[name])
            if "." in name and not name.startswith("AWS::"):
                logical_id, attribute = name.split(".", 1)
                return str(self.get_att(logical_id, attribute))
            return str(self.ref(name))

        return _SUB_VARIABLE.sub(replace, text)

    def _output(self, stack_name: str, output_name: str) -> Any:
        other = TemplateResolver(self.templates, stack_name, self.region)
        return other.resolve(other.template["Outputs"][output_name]["Value"])

    def _import(self, export_name: str) -> Any:
        for stack_name, template in self.templates.items():
            for output in template.get("Outputs", {}).values():
                export = output.get("Export", {}).get("Name")
                if export is not None and self.resolve(export) == export_name:
                    return TemplateResolver(self.templates, stack_name, self.region).resolve(
                        output["Value"]
                    )
        raise LookupError(f"no stack exports {export_name}")

    def ref(self, name: str) -> str:
        pseudo = {
            "AWS::AccountId": ACCOUNT,
            "AWS::Region": self.region,
            "AWS::Partition": PARTITION,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": self.stack_name,
        }
        if name in pseudo:
            return pseudo[name]
        resource = self.resources[name]
        kind = resource["Type"]
        props = resource.get("Properties", {})
        named = {
            "AWS::DynamoDB::Table": "TableName",
            "AWS::IAM::Role": "RoleName",
            "AWS::IAM::Group": "GroupName",
            "AWS::Logs::LogGroup": "LogGroupName",
            "AWS::ECS::Cluster": "ClusterName",
            "AWS::Lambda::Function": "FunctionName",
        }
        # CloudFormation names an unnamed resource after its stack and logical id: sibling
        # clusters share logical ids and must not resolve to the same resource.
        generated = f"{self.stack_name}-{name}"
        if kind in named:
            explicit = props.get(named[kind])
            return explicit if isinstance(explicit, str) else generated
        ids = {
            "AWS::EC2::LaunchTemplate": "lt-",
            "AWS::EC2::SecurityGroup": "sg-",
            "AWS::EC2::VPC": "vpc-",
            "AWS::EC2::Subnet": "subnet-",
            "AWS::EFS::FileSystem": "fs-",
            "AWS::EFS::AccessPoint": "fsap-",
        }
        if kind in ids:
            return ids[kind] + _hex(f"{self.stack_name}/{name}")
        if kind == "AWS::S3::Bucket":
            explicit = props.get("BucketName")
            return explicit if isinstance(explicit, str) else generated.lower()
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT}/{generated}"
        if kind == "AWS::FIS::ExperimentTemplate":
            return "EXT" + _hex(f"{self.stack_name}/{name}", 14).upper()
        if kind == "AWS::SNS::Topic":
            return self._arn("sns", generated)
        if kind == "AWS::ECS::Service":
            return self._arn("ecs", f"service/{props['ServiceName']}")
        raise NotImplementedError(f"{self.stack_name}: Ref of a {kind} ({name})")

    def get_att(self, logical_id: str, attribute: str) -> str:
        kind = self.resources[logical_id]["Type"]
        ref = self.ref(logical_id)
        if kind == "AWS::SQS::Queue":
            ref = ref.rsplit("/", 1)[1]
        arns = {
            ("AWS::DynamoDB::Table", "Arn"): self._arn("dynamodb", f"table/{ref}"),
            ("AWS::DynamoDB::Table", "StreamArn"): self._arn(
                "dynamodb", f"table/{ref}/stream/{STREAM_LABEL}"
            ),
            ("AWS::SQS::Queue", "Arn"): self._arn("sqs", ref),
            ("AWS::IAM::Role", "Arn"): f"arn:{PARTITION}:iam::{ACCOUNT}:role/{ref}",
            ("AWS::IAM::Group", "Arn"): f"arn:{PARTITION}:iam::{ACCOUNT}:group/{ref}",
            ("AWS::Logs::LogGroup", "Arn"): self._arn("logs", f"log-group:{ref}:*"),
            ("AWS::EFS::FileSystem", "Arn"): self._arn("elasticfilesystem", f"file-system/{ref}"),
            ("AWS::EFS::FileSystem", "FileSystemId"): ref,
            ("AWS::EFS::AccessPoint", "Arn"): self._arn("elasticfilesystem", f"access-point/{ref}"),
            ("AWS::EFS::AccessPoint", "AccessPointId"): ref,
            ("AWS::EC2::SecurityGroup", "GroupId"): ref,
            ("AWS::EC2::VPC", "VpcId"): ref,
            ("AWS::EC2::VPC", "DefaultSecurityGroup"): "sg-" + _hex(f"{ref}/default"),
            ("AWS::EC2::LaunchTemplate", "LaunchTemplateId"): ref,
            ("AWS::Lambda::Function", "Arn"): self._arn("lambda", f"function:{ref}"),
            ("AWS::ECS::Cluster", "Arn"): self._arn("ecs", f"cluster/{ref}"),
            ("AWS::FIS::ExperimentTemplate", "Id"): ref,
            ("AWS::S3::Bucket", "Arn"): f"arn:{PARTITION}:s3:::{ref}",
        }
        if (kind, attribute) not in arns:
            raise NotImplementedError(f"{self.stack_name}: GetAtt {logical_id}.{attribute}")
        return arns[(kind, attribute)]

    def _arn(self, service: str, resource: str) -> str:
        return f"arn:{PARTITION}:{service}:{self.region}:{ACCOUNT}:{resource}"

    # --- policies ----------------------------------------------------------------------------

    def role_policies(self) -> dict[str, RolePolicies]:
        """Every role and group of the stack with the identity policies CloudFormation attaches
        to it; a group is simulated as one of its members."""
        principals: dict[str, RolePolicies] = {}
        for kind in ("AWS::IAM::Role", "AWS::IAM::Group"):
            for logical_id in self.logical_ids(kind):
                props = self.resources[logical_id].get("Properties", {})
                inline = [
                    {"name": p["PolicyName"], "policy": self.resolve(p["PolicyDocument"])}
                    for p in props.get("Policies", [])
                ]
                arn = (
                    self.get_att(logical_id, "Arn")
                    if kind == "AWS::IAM::Role"
                    else f"arn:{PARTITION}:iam::{ACCOUNT}:user/member-of-{self.ref(logical_id)}"
                )
                principals[logical_id] = RolePolicies(
                    logical_id,
                    arn,
                    inline,
                    [str(a) for a in self.resolve(props.get("ManagedPolicyArns", []))],
                )
        for policy_id, attached_to in self._attached_policies():
            document = self.resolve(self.resources[policy_id]["Properties"]["PolicyDocument"])
            for principal_id in attached_to:
                principals[principal_id].policies.append({"name": policy_id, "policy": document})
        return principals

    def _attached_policies(self) -> Iterator[tuple[str, list[str]]]:
        for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for policy_id in self.logical_ids(kind):
                props = self.resources[policy_id]["Properties"]
                refs = [*props.get("Roles", []), *props.get("Groups", [])]
                yield policy_id, [r["Ref"] for r in refs]

    def policy_documents(self) -> dict[str, dict[str, Any]]:
        """Every identity policy document of the stack (standalone or inline), by a readable
        name; for linting."""
        documents: dict[str, dict[str, Any]] = {}
        for policy_id, _ in self._attached_policies():
            props = self.resources[policy_id]["Properties"]
            documents[policy_id] = self.resolve(props["PolicyDocument"])
        for role_id in self.logical_ids("AWS::IAM::Role"):
            for inline in self.resources[role_id].get("Properties", {}).get("Policies", []):
                documents[f"{role_id}/{inline['PolicyName']}"] = self.resolve(
                    inline["PolicyDocument"]
                )
        return documents
