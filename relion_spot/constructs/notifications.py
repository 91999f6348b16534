"""A cluster's notifications: one SNS topic the controller publishes to (job done, failed,
reclaimed and resumed, budget reached; see relion_spot.notify), e-mailed to ``notify_email``.

The topic exists on every cluster (a topic bills only per publish and delivery), so a lab can add
its own subscribers; the e-mail subscription only when ``notify_email`` is set (AWS sends a
confirmation mail first). Encrypted with SNS's AWS-managed key: free, and the key policy lets the
account's principals that may publish use it through SNS.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from ..notify.publish import TOPIC_ENV

SNS_MANAGED_KEY_ALIAS = "alias/aws/sns"


class ClusterNotifications(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, cluster_name: str, email: str | None
    ) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(
            self,
            "Topic",
            display_name=f"relion-spot {cluster_name}",
            enforce_ssl=True,
            master_key=kms.Alias.from_alias_name(self, "SnsKey", SNS_MANAGED_KEY_ALIAS),
        )
        self.topic.apply_removal_policy(RemovalPolicy.DESTROY)
        if email:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))

    def grant_publish(self, grantee: iam.IGrantable) -> None:
        """Publish to this topic only. No KMS statement: the AWS-managed key's own policy lets
        the account's principals use it through SNS (``grant_publish`` would add kms:* on
        every key of the account)."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["sns:Publish"], resources=[self.topic.topic_arn])
        )

    @property
    def topic_arn(self) -> str:
        return self.topic.topic_arn

    def publisher_environment(self) -> dict[str, str]:
        return {TOPIC_ENV: self.topic.topic_arn}
