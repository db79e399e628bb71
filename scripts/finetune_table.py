"""The README's fine-tuning table from the run folders of scripts/finetune_grid.sh.

    python scripts/finetune_table.py RUNS_DIR                 # seed 0: RUNS_DIR/<method>_<arch>_e<epochs>
    python scripts/finetune_table.py RUNS_DIR "" seed1_ seed2_   # mean over seeds 0, 1, 2 (and each seed's value)

Reads the final ``val/acc`` of each run's metrics.json and prints, per architecture, accuracy against epochs
for each method, then the margins (points) of each fine-tune over scratch at the same epochs, default lr /
lr 1e-2, which issue 16's targets name. With several prefixes a cell is the mean over the seeds that ran,
with each seed's value in brackets; the margins are between means.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean

ARCHS = {"same3": "same 3×3", "valid3": "valid 3×3 (crop)", "valid5": "valid 5×5 (crop)"}
METHODS = {"oneshot": "fine-tune, one-shot least squares (`experiment=finetune`)",
           "shrink": "fine-tune, shrinking (`experiment=finetune_shrink`)",
           "scratch": "scratch, default lr 2e-3", "scratchlr": "scratch, lr 1e-2 (the fine-tune's)"}
EPOCHS = (5, 10, 20, 60)


def _runs(runs: Path, prefixes: list[str], method: str, arch: str, epochs: int) -> list[float]:
    paths = (runs / f"{p}{method}_{arch}_e{epochs}" / "metrics.json" for p in prefixes)
    return [json.loads(path.read_text())["val/acc"] for path in paths if path.is_file()]


def _cell(values: list[float], seeds: bool) -> str:
    if not values:
        return "–"
    return f"{mean(values):.3f}" + (f" ({', '.join(f'{v:.3f}' for v in values)})" if seeds and len(values) > 1 else "")


def _points(ft: list[float], ref: list[float]) -> str:
    return "–" if not ft or not ref else f"{100 * (mean(ft) - mean(ref)):+.1f}"


def main(runs: Path, prefixes: list[str]) -> None:
    acc = {(m, a, e): _runs(runs, prefixes, m, a, e) for m in METHODS for a in ARCHS for e in EPOCHS}
    seeds = len(prefixes) > 1
    print("| architecture | method | " + " | ".join(f"{e} epochs" for e in EPOCHS) + " |")
    print("|---|---|" + "---:|" * len(EPOCHS))
    for a, arch in ARCHS.items():
        for m, method in METHODS.items():
            if any(acc[m, a, e] for e in EPOCHS):
                print(f"| {arch} | {method} | " + " | ".join(_cell(acc[m, a, e], seeds) for e in EPOCHS) + " |")
    print("\nmargins (points) of each fine-tune over scratch at the same epochs, default lr / lr 1e-2:")
    for a in ARCHS:
        for m in ("oneshot", "shrink"):
            cells = [f"e{e}: {_points(acc[m, a, e], acc['scratch', a, e])} / {_points(acc[m, a, e], acc['scratchlr', a, e])}"
                     for e in EPOCHS[:-1]]
            print(f"  {a} {m}: " + ", ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2:] or [""])
