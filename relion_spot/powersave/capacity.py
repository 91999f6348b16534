"""Memory of instance types that just ran out of spot capacity, shared by resume runs.

price-capacity-optimized ignores override priorities, so "try it last" means: leave a type that
failed out of the overrides for ``backoff_seconds`` while the group has other types, and use it
again only when every type of the group has failed recently. A small JSON file under the
controller's state directory, updated under an exclusive lock (slurmctld may run several resume
programs at once) and replaced atomically (a crash never leaves half a file).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE = "capacity.json"


@dataclass(frozen=True)
class Shortage:
    instance_type: str
    code: str
    until: float


class CapacityMemory:
    def __init__(
        self,
        state_dir: Path,
        backoff_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = state_dir / STATE_FILE
        self.backoff_seconds = backoff_seconds
        self.clock = clock

    def current(self) -> dict[str, Shortage]:
        """Types still in their back-off period, by type."""
        with self._locked() as data:
            return self._live(data)

    def order(self, instance_types: Sequence[str]) -> tuple[list[str], list[str]]:
        """(types to launch with, types left out for now). Never leaves nothing to launch."""
        short = self.current()
        usable = [t for t in instance_types if t not in short]
        if usable:
            return usable, [t for t in instance_types if t in short]
        # Every type failed recently: try them all, the one that failed longest ago first.
        return sorted(instance_types, key=lambda t: short[t].until), []

    def remember(self, failures: dict[str, str]) -> None:
        """Start (or extend) the back-off of each type -> EC2 error code."""
        if not failures or self.backoff_seconds <= 0:
            return
        until = self.clock() + self.backoff_seconds
        with self._locked(write=True) as data:
            for instance_type, code in failures.items():
                data[instance_type] = {"code": code, "until": until}

    def forget(self, instance_types: Sequence[str]) -> None:
        """A type that launched again is usable again."""
        if not instance_types:
            return
        with self._locked(write=True) as data:
            for instance_type in instance_types:
                data.pop(instance_type, None)

    def _live(self, data: dict[str, Any]) -> dict[str, Shortage]:
        now = self.clock()
        return {
            t: Shortage(t, str(v.get("code", "")), float(v["until"]))
            for t, v in data.items()
            if isinstance(v, dict) and isinstance(v.get("until"), int | float) and v["until"] > now
        }

    @contextmanager
    def _locked(self, write: bool = False) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_suffix(".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            if write:
                live = {t: {"code": s.code, "until": s.until} for t, s in self._live(data).items()}
                temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
                temporary.write_text(json.dumps(live, sort_keys=True) + "\n")
                os.replace(temporary, self.path)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            log.warning("capacity memory %s unreadable (%s): starting afresh", self.path, err)
            return {}
        return data if isinstance(data, dict) else {}
