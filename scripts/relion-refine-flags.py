#!/usr/bin/env python3
"""Write relion_spot/relion/relion_refine_flags.json from a RELION source tarball.

    python3 scripts/relion-refine-flags.py relion-5.0.1.tar.xz

The flags relion_refine (and relion_refine_mpi) accept are the ones its parser is asked for in
src/ml_optimiser.cpp, src/ml_optimiser_mpi.cpp and src/args.cpp: ``checkOption("--x", ...)`` is a
switch, ``getOption("--x", ...)`` and ``getParameter(argc, argv, "--x")`` take a value, and a flag
asked for both ways takes one optionally. Reading the
source rather than ``--help`` also finds the options RELION parses without listing them
(``--continue``, ``--pipeline_control``, ``--dont_combine_weights_via_disc``, ...). The job
parameters refuse any other flag: RELION itself only warns about an unknown one, so a typo would
silently run a different job.

``continue_flags`` are the ones ``MlOptimiser::parseContinue`` reads: on ``--continue`` RELION takes
every other setting from the run's _optimiser.star, so only these may change when a job continues
another run.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
from pathlib import Path

SOURCES = ("src/ml_optimiser.cpp", "src/ml_optimiser_mpi.cpp", "src/args.cpp")
OUTPUT = Path(__file__).resolve().parents[1] / "relion_spot" / "relion" / "relion_refine_flags.json"
_SWITCH = re.compile(r'checkOption\(\s*"(--[A-Za-z0-9_]+)"')
_VALUE = re.compile(r'(?:getOption\(|getParameter\(\s*argc\s*,\s*argv\s*,)\s*"(--[A-Za-z0-9_]+)"')
_CHECKED = re.compile(r'checkParameter\(\s*argc\s*,\s*argv\s*,\s*"(--[A-Za-z0-9_]+)"')
_VERSION = re.compile(r"relion-(\d+\.\d+(?:\.\d+)?)")
_CONTINUE = re.compile(r"void MlOptimiser::parseContinue\(.*?\n}\n", re.DOTALL)


def flags_of(texts: list[str]) -> dict[str, str]:
    """flag -> "switch", "value", or "optional-value" (asked for both ways, as ``--gpu`` is:
    alone, all devices; with a list, those)."""
    switches = {f for text in texts for f in _SWITCH.findall(text) + _CHECKED.findall(text)}
    values = {f for text in texts for f in _VALUE.findall(text)}
    tested = {f for text in texts for f in _SWITCH.findall(text)}
    kinds = {f: "switch" for f in switches} | {f: "value" for f in values}
    kinds |= {f: "optional-value" for f in values & tested}
    return dict(sorted(kinds.items()))


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    tarball = Path(argv[0])
    version = _VERSION.search(tarball.name)
    texts = []
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            if any(member.name.endswith("/" + source) for source in SOURCES):
                handle = archive.extractfile(member)
                assert handle is not None
                texts.append(handle.read().decode("utf-8", "replace"))
    if len(texts) != len(SOURCES):
        print(f"{tarball}: expected {', '.join(SOURCES)}", file=sys.stderr)
        return 1
    record = {
        "program": "relion_refine / relion_refine_mpi",
        "relion_version": version.group(1) if version else "unknown",
        "source": "the parser calls (checkOption: switch; getOption, getParameter: value) in "
        + ", ".join(SOURCES)
        + " of the RELION source",
        "flags": flags_of(texts),
        "continue_flags": sorted(flags_of(_CONTINUE.findall("\n".join(texts)))),
    }
    OUTPUT.write_text(json.dumps(record, indent=2) + "\n")
    if not record["continue_flags"]:
        print(f"{tarball}: no MlOptimiser::parseContinue in {SOURCES[0]}", file=sys.stderr)
        return 1
    print(
        f"{OUTPUT.name}: {len(record['flags'])} flags ({len(record['continue_flags'])} read on "
        f"--continue) of RELION {record['relion_version']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
