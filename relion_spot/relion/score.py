"""Label-swap-invariant accuracy of a RELION classification against a ground-truth file.

RELION numbers its classes arbitrarily, so a run is scored under the one-to-one matching of its
classes to the true classes that agrees with the most particles (the assignment problem, solved
exactly with the Hungarian algorithm). Accuracy = agreeing particles / scored particles.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

_ITERATION_DATA = re.compile(r"_it(\d{3,})_data\.star$")


class ScoreError(ValueError):
    """The run or the truth cannot be scored; the message names the file and the reason."""


def max_weight_assignment(weights: np.ndarray) -> list[tuple[int, int]]:
    """Rows matched one-to-one to columns maximising the summed weight (Hungarian algorithm).

    Rectangular matrices are padded with zero weight, so every row of the smaller side is
    matched; pairs landing on padding are left out of the answer.
    """
    rows, cols = weights.shape
    n = max(rows, cols)
    cost = np.zeros((n, n))
    cost[:rows, :cols] = -np.asarray(weights, dtype=float)
    # Potentials u (rows) and v (columns), column matches p; index 0 is the virtual start.
    u = np.zeros(n + 1)
    v = np.zeros(n + 1)
    p = np.zeros(n + 1, dtype=int)
    way = np.zeros(n + 1, dtype=int)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            delta = np.inf
            j1 = 0
            for j in range(1, n + 1):
                if used[j]:
                    continue
                reduced = cost[i0 - 1, j - 1] - u[i0] - v[j]
                if reduced < minv[j]:
                    minv[j] = reduced
                    way[j] = j0
                if minv[j] < delta:
                    delta = minv[j]
                    j1 = j
            for j in range(n + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    pairs = [(int(p[j]) - 1, j - 1) for j in range(1, n + 1)]
    return sorted((r, c) for r, c in pairs if r < rows and c < cols)


@dataclass(frozen=True)
class IterationScore:
    iteration: int
    accuracy: float
    particles: int
    mapping: dict[int, int]
    """Run class → true class under the best matching."""
    class_sizes: dict[int, int]


def read_truth(path: Path) -> pd.Series:
    """True class per image name, from a STAR file with rlnImageName and rlnClassNumber."""
    return _class_by_image(path, "truth")


def _class_by_image(path: Path, what: str) -> pd.Series:
    if not path.is_file():
        raise ScoreError(f"{what} file {path} does not exist")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as error:
        raise ScoreError(f"{what} file {path} is not a readable STAR file: {error}") from error
    table = blocks.get("particles")
    if table is None:
        tables = [b for b in blocks.values() if isinstance(b, pd.DataFrame)]
        table = tables[-1] if tables else None
    needed = {"rlnImageName", "rlnClassNumber"}
    if not isinstance(table, pd.DataFrame) or not needed <= set(table.columns):
        raise ScoreError(f"{what} file {path} has no particle table with {sorted(needed)}")
    series = table.set_index("rlnImageName")["rlnClassNumber"].astype(int)
    if series.index.has_duplicates:
        raise ScoreError(f"{what} file {path} names some particle images more than once")
    return series


def _stack_key(name: str) -> str:
    """'12@some/dir/stack.mrcs' → '12@stack.mrcs': survives runs started from another folder."""
    index, _, stack = name.partition("@")
    return f"{int(index)}@{Path(stack).name}" if index.isdigit() else Path(name).name


def _align(run: pd.Series, truth: pd.Series, source: Path) -> tuple[np.ndarray, np.ndarray]:
    common = run.index.intersection(truth.index)
    if len(common) == len(run):
        return run.loc[common].to_numpy(), truth.loc[common].to_numpy()
    run_keys = run.index.map(_stack_key)
    truth_keys = truth.index.map(_stack_key)
    if run_keys.has_duplicates or truth_keys.has_duplicates:
        raise ScoreError(f"{source}: particle images do not match the truth's image names")
    by_key = pd.Series(truth.to_numpy(), index=truth_keys)
    found = run_keys.isin(by_key.index)
    if not found.all():
        missing = run.index[~found][0]
        raise ScoreError(
            f"{source}: {int((~found).sum())} particles are not in the truth (e.g. {missing})"
        )
    return run.to_numpy(), by_key.loc[run_keys].to_numpy()


def score_data_star(data_star: Path, truth: pd.Series) -> IterationScore:
    """Accuracy of one iteration's particle assignments against the truth."""
    match = _ITERATION_DATA.search(data_star.name)
    iteration = int(match.group(1)) if match else -1
    assigned, true = _align(_class_by_image(data_star, "run data"), truth, data_star)
    run_classes = np.unique(assigned)
    true_classes = np.unique(truth.to_numpy())
    agreement = np.array(
        [[np.sum((assigned == r) & (true == t)) for t in true_classes] for r in run_classes]
    )
    pairs = max_weight_assignment(agreement)
    agreeing = sum(int(agreement[r, t]) for r, t in pairs)
    return IterationScore(
        iteration=iteration,
        accuracy=agreeing / len(assigned),
        particles=len(assigned),
        mapping={int(run_classes[r]): int(true_classes[t]) for r, t in pairs},
        class_sizes={int(c): int(np.sum(assigned == c)) for c in run_classes},
    )


def iteration_data_stars(run_root: Path) -> dict[int, Path]:
    """Every <root>_itNNN_data.star of a run, by iteration."""
    found = {}
    for path in run_root.parent.glob(f"{run_root.name}_it*_data.star"):
        match = _ITERATION_DATA.search(path.name)
        if match and path.name == f"{run_root.name}_it{match.group(1)}_data.star":
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def score_run(run_root: Path, truth_path: Path) -> list[IterationScore]:
    """Accuracy for every iteration the run has written, oldest first."""
    truth = read_truth(truth_path)
    stars = iteration_data_stars(run_root)
    if not stars:
        raise ScoreError(f"no {run_root.name}_itNNN_data.star files under {run_root.parent}")
    return [score_data_star(path, truth) for path in stars.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relion_spot.relion.score",
        description="Label-swap-invariant accuracy of a RELION classification, per iteration.",
    )
    parser.add_argument(
        "--run-root",
        type=Path,
        required=True,
        help="output root given to relion_refine --o (e.g. Class3D/run)",
    )
    parser.add_argument(
        "--truth",
        type=Path,
        required=True,
        help="STAR file with the true rlnClassNumber per rlnImageName",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        scores = score_run(args.run_root, args.truth)
    except ScoreError as error:
        print(f"score: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(s) for s in scores], indent=2))
        return 0
    print(f"{'iteration':>9}  {'accuracy':>8}  particles per class")
    for s in scores:
        sizes = " ".join(f"{c}:{n}" for c, n in s.class_sizes.items())
        print(f"{s.iteration:>9}  {s.accuracy:>8.3f}  {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
