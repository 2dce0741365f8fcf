"""Validation cost against wall-clock time for one or more training runs (a PNG).

    python scripts/plot_training.py runs/<run_a> runs/<run_b> --baseline 91.97 --out docs/cost_vs_time.png

Reads each run's progress.csv (written after every update) and plots eval/val_cost_mean
(exact simulator, validation segments) against time/wall_time in minutes; runs whose
directory names share a label (--label) are drawn in one colour.
"""
import argparse
import csv
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_curve(run_dir: Path):
    """(minutes [K], validation cost [K]) from run_dir/progress.csv; raises SystemExit if absent."""
    path = run_dir / "progress.csv"
    if not path.is_file():
        sys.exit(f"error: {path}: no such file (is {run_dir} a training run directory?)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    t, c = [], []
    for r in rows:
        v = r.get("eval/val_cost_mean", "")
        if v not in ("", "nan"):
            t.append(float(r["time/wall_time"]) / 60.0)
            c.append(float(v))
    return t, c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--label", action="append", default=None, help="legend label per run (in order)")
    ap.add_argument("--baseline", type=float, default=None, help="PID validation cost (horizontal line)")
    ap.add_argument("--out", default="docs/cost_vs_time.png")
    ap.add_argument("--title", default="Validation cost (exact simulator) against training wall-clock time")
    args = ap.parse_args(argv)
    labels = args.label or [r.name for r in args.runs]
    colours = {}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run, label in zip(args.runs, labels):
        t, c = read_curve(run)
        colour = colours.setdefault(label, f"C{len(colours)}")
        ax.plot(t, c, color=colour, label=label if label not in ax.get_legend_handles_labels()[1] else None,
                marker=".")
    if args.baseline is not None:
        ax.axhline(args.baseline, color="k", ls="--", lw=1, label=f"PID {args.baseline:.2f}")
        ax.axhline(args.baseline / 2, color="gray", ls=":", lw=1, label=f"0.5 x PID {args.baseline / 2:.2f}")
    ax.set_xlabel("wall-clock time (min, 2-core CPU)")
    ax.set_ylabel("mean total_cost, validation segments")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
