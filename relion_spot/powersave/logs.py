"""One log line per decision, on stderr and in a file: slurmctld throws the programs' output
away, so the file is where an operator finds why a node did or did not come up."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

NOISY = ("botocore", "boto3", "urllib3", "s3transfer")
_MARK = "_relion_spot_program"


def setup(program: str, log_file: str = "") -> logging.Logger:
    """Configure the root logger for ``program``; returns that program's logger."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter(f"relion-spot {program}: %(message)s"))
    _add(root, stderr)
    logger = logging.getLogger(f"relion_spot.powersave.{program}")
    if log_file:
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            to_file = logging.FileHandler(log_file)
        except OSError as err:
            logger.warning("cannot write log file %s (%s); logging to stderr only", log_file, err)
        else:
            to_file.setFormatter(
                logging.Formatter(
                    f"%(asctime)s {program}[%(process)d] %(levelname)s %(message)s",
                    "%Y-%m-%dT%H:%M:%S%z",
                )
            )
            _add(root, to_file)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    return logger


def _add(root: logging.Logger, handler: logging.Handler) -> None:
    """Handlers added here are replaced on the next ``setup``; others (pytest's) stay."""
    setattr(handler, _MARK, True)
    root.addHandler(handler)
