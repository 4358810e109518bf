"""Training curves of one or more runs as one PNG, read from each run's ``metrics.jsonl``.

One row per run: the training loss (and the stage's named terms), then validation PSNR and LPIPS of the restored
faces against the degraded inputs (dashed) over the steps. Needs matplotlib.

    python -m trainer.plot_runs runs/small/pltrans_restoration runs/small/pgdiff_restorer -o curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bfr_core.errors import InputError


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The rows of ``<run>/metrics.jsonl`` (a clear error when the run has none)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise InputError(f"{path} does not exist: pass a training run's output_dir")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged key."""
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def last_validation(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The last row that holds validation image metrics."""
    for row in reversed(rows):
        if any(k.startswith("val/psnr_") for k in row):
            return row
    return {}


def plot_runs(runs: list[str | Path], out: str | Path, loss_keys: tuple[str, ...] = ("train/loss",)) -> Path:
    """Write the curves of ``runs`` (one row each) to the PNG ``out``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InputError("plotting needs matplotlib: pip install matplotlib") from e
    fig, axes = plt.subplots(len(runs), 3, figsize=(13, 3.2 * len(runs)), squeeze=False)
    for row_axes, run in zip(axes, runs):
        rows = read_metrics(run)
        name = Path(run).name
        ax = row_axes[0]
        for key in loss_keys:
            steps, values = series(rows, key)
            if steps:
                ax.plot(steps, values, label=key.split("/", 1)[1])
        ax.set_yscale("log")
        ax.set_title(f"{name}: training loss")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        for ax, metric in zip(row_axes[1:], ("psnr", "lpips")):
            for which, style in (("restored", "-o"), ("degraded", "--s")):
                steps, values = series(rows, f"val/{metric}_{which}")
                if steps:
                    ax.plot(steps, values, style, label=which, markersize=3)
            ax.set_title(f"{name}: validation {metric.upper()}" + (" (dB)" if metric == "psnr" else " (lower is better)"))
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    """The command line: plot the runs, then print each one's last validation metrics."""
    ap = argparse.ArgumentParser(prog="python -m trainer.plot_runs", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="training output folders (each with a metrics.jsonl)")
    ap.add_argument("-o", "--out", default="curves.png", help="the PNG to write")
    args = ap.parse_args(argv)
    print(plot_runs(args.runs, args.out))
    for run in args.runs:
        val = last_validation(read_metrics(run))
        shown = {k: round(v, 4) for k, v in val.items() if k.startswith(("val/psnr_", "val/lpips_"))}
        print(f"{Path(run).name} step {val.get('step', '-')}: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
