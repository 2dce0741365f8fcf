"""Compare a test controller with a baseline controller and write an HTML report.

Both controllers run on the same segments through the exact batched simulator
(`tinyphysics.run_batched`), so the per-segment costs equal the official harness's.

  python eval.py --model_path ./models/tinyphysics.onnx --data_path ./data --num_segs 100 \
      --test_controller ppo --baseline_controller pid [--report report.html] [--costs_csv PATH] \
      [--backend ray --num_workers N [--address auto|HOST:PORT]]

Costs (per segment, over steps CONTROL_START_IDX..COST_END_IDX-1):
  lataccel_cost = mean((target - pred)^2) * 100        [(m/s^2)^2 * 100]
  jerk_cost     = mean((diff(pred) / DEL_T)^2) * 100    [(m/s^3)^2 * 100]
  total_cost    = 50 * lataccel_cost + jerk_cost
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tinyphysics as tp

COST_KEYS = ("lataccel_cost", "jerk_cost", "total_cost")
ROLES = ("test", "baseline")
Histories = Dict[str, List[Tuple[np.ndarray, np.ndarray, np.ndarray]]]


def evaluate(model: tp.TinyPhysicsModel, paths: Sequence[str], test: str, baseline: str,
             batch_size: int = 1000, evaluator=None) -> Tuple[pd.DataFrame, Histories]:
    """Run both controllers on `paths` (strings such as 'data/00000.csv', which seed the RNG).

    evaluator: None runs in this process (`tp.run_batched`); a
    `ppo_training.distributed.RayEvaluator` shards the segments across Ray workers and
    returns the same per-segment costs in the same order.

    Returns (costs, histories):
      costs: DataFrame with 2 * len(paths) rows, test rows first, columns
        segment (file name), controller, role ('test' | 'baseline'), lataccel_cost,
        jerk_cost, total_cost (float64).
      histories: {'test': [...], 'baseline': [...]}, one (target, lataccel, action) tuple
        of float64 arrays of shape [T] per segment in the order of paths
        (lataccel in m/s^2, action = steer command in [-2, 2]).
    """
    rows, histories = [], {}
    for role, name in zip(ROLES, (test, baseline)):
        if evaluator is not None:
            costs, hist = evaluator.run(list(paths), name, keep_histories=True, max_chunk=batch_size)
        else:
            costs, hist = tp.run_batched(model, list(paths), name, batch_size=batch_size,
                                         progress=True, keep_histories=True)
        histories[role] = hist
        for path, c in zip(paths, costs):
            rows.append({"segment": Path(path).name, "controller": name, "role": role,
                         **{k: float(c[k]) for k in COST_KEYS}})
    return pd.DataFrame(rows), histories


def averages(df: pd.DataFrame) -> Tuple[pd.DataFrame, float, int]:
    """Mean costs per role (rows 'test', 'baseline'), the ratio of mean total_cost
    test / baseline, and the number of segments where test's total_cost is lower."""
    means = df.groupby("role", sort=False)[list(COST_KEYS)].mean().loc[list(ROLES)]
    means.index.name = None
    means.insert(0, "controller", [df.loc[df.role == r, "controller"].iloc[0] for r in ROLES])
    t = df[df.role == "test"].total_cost.to_numpy()
    b = df[df.role == "baseline"].total_cost.to_numpy()
    ratio = float(t.mean() / b.mean()) if b.mean() != 0 else float("inf")
    return means, ratio, int(np.sum(t < b))


def _png(fig) -> str:
    """A matplotlib figure as an <img> tag with an embedded base64 PNG (closes the figure)."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figures(df: pd.DataFrame, histories: Histories, names: Dict[str, str]) -> Dict[str, str]:
    """<img> tags: 'hist' (cost histograms), 'scatter' (per-segment totals), and
    'rollout_best' / '_median' / '_worst' (segments ranked by test total_cost)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"test": "tab:blue", "baseline": "tab:orange"}
    out = {}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for ax, key in zip(axes, COST_KEYS):
        bins = np.histogram_bin_edges(df[key], bins=min(30, max(5, len(df) // 4)))
        for role in ROLES:
            ax.hist(df.loc[df.role == role, key], bins=bins, alpha=0.55, color=colors[role],
                    label=f"{role}: {names[role]}")
        ax.set_title(key)
        ax.set_xlabel("cost")
        ax.set_ylabel("segments")
        ax.legend()
    out["hist"] = _png(fig)

    t = df[df.role == "test"].total_cost.to_numpy()
    b = df[df.role == "baseline"].total_cost.to_numpy()
    fig, ax = plt.subplots(figsize=(6, 6), constrained_layout=True)
    ax.scatter(b, t, s=14, alpha=0.7)
    lim = [0, max(t.max(), b.max()) * 1.05]
    ax.plot(lim, lim, "k--", lw=1, label="y = x")
    ax.set(xlim=lim, ylim=lim, xlabel=f"baseline ({names['baseline']}) total_cost",
           ylabel=f"test ({names['test']}) total_cost",
           title="per-segment total_cost (below the line: test wins)")
    ax.legend()
    out["scatter"] = _png(fig)

    segments = df[df.role == "test"].segment.to_numpy()
    order = np.argsort(t, kind="stable")
    for label, i in (("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])):
        target, lat_t, act_t = histories["test"][i]
        _, lat_b, act_b = histories["baseline"][i]
        fig, ax = plt.subplots(2, 1, figsize=(13, 6.5), sharex=True, constrained_layout=True)
        ax[0].plot(target, color="black", lw=1.2, label="target")
        ax[0].plot(lat_t, color=colors["test"], lw=1, label=f"test: {names['test']} ({t[i]:.2f})")
        ax[0].plot(lat_b, color=colors["baseline"], lw=1, label=f"baseline: {names['baseline']} ({b[i]:.2f})")
        ax[1].plot(act_t, color=colors["test"], lw=1, label=f"test: {names['test']}")
        ax[1].plot(act_b, color=colors["baseline"], lw=1, label=f"baseline: {names['baseline']}")
        for a in ax:
            a.axvline(tp.CONTROL_START_IDX, color="green", ls="--", lw=1, label="control start")
            a.axvline(tp.COST_END_IDX, color="red", ls="--", lw=1, label="cost end")
            a.legend(loc="upper left", fontsize=8, ncol=5)
        ax[0].set_ylabel("lataccel (m/s^2)")
        ax[1].set_ylabel("steer command")
        ax[1].set_xlabel("step (10 Hz)")
        ax[0].set_title(f"{label} test segment: {segments[i]} (total_cost in legend)")
        out[f"rollout_{label}"] = _png(fig)
    return out


def create_report(df: pd.DataFrame, histories: Histories, test: str, baseline: str) -> str:
    """A self-contained HTML report (figures embedded as base64 PNGs) of evaluate()'s output."""
    names = {"test": test, "baseline": baseline}
    means, ratio, wins = averages(df)
    n = len(df) // 2
    figs = _figures(df, histories, names)
    esc = html.escape
    table = means.to_html(classes="averages", float_format=lambda x: f"{x:.4f}", border=0)
    rollouts = "\n".join(f"<h3>{k.split('_')[1]}</h3>\n{figs[k]}" for k in
                         ("rollout_best", "rollout_median", "rollout_worst"))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Controls Challenge: {esc(test)} vs {esc(baseline)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1250px}}img{{max-width:100%}}
table.averages{{border-collapse:collapse}}table.averages td,table.averages th{{padding:4px 10px;
border:1px solid #ccc;text-align:right}}</style></head><body>
<h1>Controls Challenge report</h1>
<p>Test controller: <b>{esc(test)}</b> &middot; baseline controller: <b>{esc(baseline)}</b>
&middot; segments: <b>{n}</b></p>
<h2>Average costs</h2>
{table}
<p>test / baseline mean total_cost: <b>{ratio:.4f}</b> &middot; test beats baseline on
<b>{wins} of {n}</b> segments.</p>
<h2>Cost distributions</h2>
{figs['hist']}
<h2>Per-segment total_cost</h2>
{figs['scatter']}
<h2>Sample rollouts (test controller's best, median and worst segments)</h2>
{rollouts}
</body></html>
"""


def write_report(path: str, text: str) -> None:
    """Write text to path atomically (temporary file in the same directory + os.replace)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_costs(path: str, df: pd.DataFrame) -> None:
    """Per-segment rows (segment, controller, lataccel_cost, jerk_cost, total_cost), floats
    as repr (full precision), written atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["segment", "controller", *COST_KEYS])
        for r in df.itertuples(index=False):
            w.writerow([r.segment, r.controller, *(repr(float(getattr(r, k))) for k in COST_KEYS)])
    os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point; returns 0 on success, 2 on bad data, model or controller."""
    p = argparse.ArgumentParser(description="Compare a test and a baseline controller.")
    p.add_argument("--model_path", type=str, required=True)
    p.add_argument("--data_path", type=str, required=True, help="directory of segment CSVs")
    p.add_argument("--num_segs", type=int, default=100)
    p.add_argument("--test_controller", default="pid")
    p.add_argument("--baseline_controller", default="pid")
    p.add_argument("--report", default="report.html", help="HTML report path")
    p.add_argument("--costs_csv", default=None, help="write every segment's costs here")
    p.add_argument("--batch_size", type=int, default=1000, help="segments simulated per model call")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="ray: shard the segments across Ray workers (pip install '.[ray]'); same costs")
    p.add_argument("--num_workers", type=int, default=2, help="Ray workers (one CPU each) with --backend ray")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto' or HOST:PORT); default: start a local one")
    args = p.parse_args(argv)

    from ppo_training.distributed import DistributedError  # no ray import: that happens with --backend ray

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    for name in (args.test_controller, args.baseline_controller):
        if name not in tp.available_controllers():
            return fail(f"unknown controller {name!r}; available: {tp.available_controllers()}")
    if args.num_segs < 1 or args.batch_size < 1 or args.num_workers < 1:
        return fail("--num_segs, --batch_size and --num_workers must be at least 1")
    if not Path(args.data_path).is_dir():
        return fail(f"{args.data_path}: --data_path must be a directory of segment CSVs")
    try:
        paths = tp.list_segments(args.data_path, args.num_segs)
        model = tp.TinyPhysicsModel(args.model_path)
        if args.backend == "ray":
            from ppo_training.distributed import RayEvaluator
            with RayEvaluator(args.num_workers, args.model_path, address=args.address) as evaluator:
                df, histories = evaluate(model, paths, args.test_controller, args.baseline_controller,
                                         args.batch_size, evaluator)
        else:
            df, histories = evaluate(model, paths, args.test_controller, args.baseline_controller,
                                     args.batch_size)
    except (tp.DataError, tp.ModelError, ValueError, DistributedError) as e:
        # ValueError: e.g. a bad policy file; DistributedError: ray missing, workers dying
        return fail(str(e))
    means, ratio, wins = averages(df)
    print()
    print(means.to_string(float_format=lambda x: f"{x:.4f}"))
    print(f"test/baseline total_cost ratio: {ratio:.4f}; test beats baseline on {wins} of {len(paths)} segments")
    print(tp.summary_line(df[df.role == "test"].to_dict("records")))
    try:
        if args.costs_csv:
            write_costs(args.costs_csv, df)
        write_report(args.report, create_report(df, histories, args.test_controller, args.baseline_controller))
    except OSError as e:
        return fail(f"cannot write output: {e}")
    print(f"Report saved to: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
