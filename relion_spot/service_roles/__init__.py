"""Service-linked roles a deployment needs before its first resource of that service."""
