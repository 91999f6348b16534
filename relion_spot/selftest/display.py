"""What ``relion-spot selftest`` prints: each phase as it ends with its time and cost, the
permission checks, then one verdict per capability."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, TextIO

from .flow import Phase, SelftestResult
from .permissions import ALLOWED
from .record import StoredChecks
from .verdicts import FAILED, PASSED

MARKS = {ALLOWED: "allowed", "denied": "DENIED ", "error": "ERROR  "}


class Display:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def report(self, event: str, details: Any) -> None:
        if event == "phase done" and isinstance(details, Phase):
            self.out.write(phase_line(details) + "\n")
            self.out.flush()

    def summary(self, result: SelftestResult) -> None:
        write = self.out.write
        if result.checks is not None:
            write(checks_text(result.checks))
        if result.node_checks is not None:
            write(checks_text(result.node_checks))
        if result.refused:
            write(f"refused: {result.refused}\n")
        if result.verdicts:
            write("\nverdicts:\n")
            for verdict in result.verdicts:
                mark = {PASSED: "ok    ", FAILED: "FAILED"}.get(verdict.result, "--    ")
                write(f"  {mark} {verdict.capability:<14} {verdict.detail}\n")
        for note in result.seen.notes:
            write(f"note: {note}\n")
        for step in result.cleanup:
            write(f"cleanup: {step}\n")
        if result.phases:
            seconds = sum(p.seconds for p in result.phases)
            write(f"total: {seconds:.0f} s, ${result.total_usd:.4f} at the on-demand ceiling\n")


def phase_line(phase: Phase) -> str:
    return f"{phase.name:<17} {phase.seconds:>7.1f} s  ${phase.usd:>8.4f}  {phase.note}"


def checks_text(checks: StoredChecks) -> str:
    lines = [f"permission checks ({checks.checker}, at {checks.checked_at}):"]
    for outcome in checks.outcomes:
        line = f"  {MARKS.get(outcome.outcome, outcome.outcome)} {outcome.action:<24} "
        line += f"({outcome.program}) {outcome.target}"
        if outcome.outcome != ALLOWED:
            line += f"\n           {outcome.code}: {outcome.reason}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def as_json(result: SelftestResult) -> str:
    return json.dumps(
        {
            "checks": [o.to_json() for o in result.checks.outcomes] if result.checks else None,
            "node_checks": (
                [o.to_json() for o in result.node_checks.outcomes] if result.node_checks else None
            ),
            "phases": [asdict(p) for p in result.phases],
            "verdicts": {
                v.capability: {"result": v.result, "detail": v.detail} for v in result.verdicts
            },
            "refused": result.refused,
            "cleanup": result.cleanup,
            "notes": result.seen.notes,
            "total_usd": round(result.total_usd, 6),
        },
        sort_keys=True,
    )
