#!/usr/bin/env python3
"""The CDK app: the only place that reads CDK context and the environment."""

from __future__ import annotations

import os
import sys

from aws_cdk import App

from relion_spot.deployment import build
from relion_spot.settings import SettingsError, from_context


def main() -> None:
    app = App()
    context = dict(app.node.get_all_context())
    if "account" not in context and os.environ.get("CDK_DEFAULT_ACCOUNT"):
        context["account"] = os.environ["CDK_DEFAULT_ACCOUNT"]
    if "region" not in context and os.environ.get("CDK_DEFAULT_REGION"):
        context["region"] = os.environ["CDK_DEFAULT_REGION"]
    try:
        settings = from_context(context)
    except SettingsError as error:
        sys.stderr.write(f"relion-spot: {error}\n")
        sys.exit(2)
    build(app, settings)
    app.synth()


if __name__ == "__main__":
    main()
