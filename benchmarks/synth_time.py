"""How long synth of every stack (1-, 4- and 8-GPU clusters side by side) takes.

Prints three figures: the real `cdk synth` command end to end (what a user waits for), the
app's first in-process synth (JS runtime start included) and a warm repeat. Target: <= 15 s.

    .venv/bin/python benchmarks/synth_time.py [--gpus 1,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_DISABLE_CLI_TELEMETRY", "true")
DEFAULT_GPUS = "1,4,8"


def cli_synth_seconds(context: dict[str, str]) -> float:
    env = {
        **os.environ,
        "CDK_DISABLE_CLI_TELEMETRY": "true",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    }
    with tempfile.TemporaryDirectory() as out:
        command = [str(REPO_ROOT / "node_modules/.bin/cdk"), "synth", "--quiet", "-o", out]
        for key, value in context.items():
            command += ["-c", f"{key}={value}"]
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
        return time.perf_counter() - start


def in_process_synth_seconds(overrides: dict[str, str]) -> float:
    from aws_cdk import App

    from relion_spot.deployment import build
    from relion_spot.settings import from_context

    context = {**json.loads((REPO_ROOT / "cdk.json").read_text())["context"], **overrides}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        app = App(context=context, outdir=out)
        build(app, from_context(context))
        app.synth()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpus", default=DEFAULT_GPUS, help="the gpus setting: one cluster per count"
    )
    args = parser.parse_args(argv)
    context = {"gpus": args.gpus}
    stacks = 2 + len(args.gpus.split(","))
    cli = cli_synth_seconds(context)
    first = in_process_synth_seconds(context)
    warm = in_process_synth_seconds(context)
    label = f"cdk synth, {stacks} stacks (gpus={args.gpus}), CLI end to end:"
    print(f"{label} {cli:.1f} s (target <= 15 s)")
    print(f"in-process synth, first in this process: {first:.1f} s")
    print(f"in-process synth, warm repeat:           {warm:.1f} s")
    sys.exit(0 if cli <= 15 else 1)


if __name__ == "__main__":
    main()
