"""The cluster's auth/slurm key as an SSM Parameter Store SecureString, made by its own stack.

CloudFormation cannot create a SecureString parameter, so a custom resource does: its function
generates the key, stores it (Standard tier, encrypted with the AWS managed key ``aws/ssm``: no
monthly charge, where a Secrets Manager secret billed $0.40 a month per cluster, asleep too) and
deletes it with the stack. The key never passes through the template, an output or the custom
resource's reply.
"""
