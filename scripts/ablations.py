"""Run the recipe ablations: one training run per variant (config + overrides), then a
markdown table of what each piece is worth in exact validation cost.

    python scripts/ablations.py --config ppo_training/configs/ff_residual.yaml \
        --budget 1500000 --jobs 2 --out docs/ablations.md

Each variant is `python ppo_training/train.py --config CONFIG <overrides>` with
train.total_timesteps=BUDGET, run_name=ablation_<name>_seed<seed>, and --no_export; its
final validation cost (exact simulator, data.val_files) comes from the run's
training_stats.npz. Runs already finished (final_model.pt present) are not rerun, so an
interrupted sweep continues where it stopped.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# name -> (what it tests, overrides relative to the full recipe)
VARIANTS = {
    "full": ("the full recipe", []),
    "base_pid": ("residual on the official PID instead of the tuned PID + feedforward",
                 ["policy.base=pid", "policy.base_weights=null"]),
    "base_none": ("no base controller: the network alone, behaviour-cloned from the PID first",
                  ["policy.base=none", "policy.base_weights=null", "bc.teacher=pid", "bc.epochs=20"]),
    "no_bc": ("no warm start: critic and normaliser start untrained", ["bc.enabled=false"]),
    "no_obs_norm": ("no observation normalisation", ["policy.normalize_obs=false"]),
    "synthetic": ("80 synthetic segments added to the 80 real ones", ["data.synthetic_num=80"]),
    "no_future_plan": ("future plan hidden from the network (zeroed features)", ["policy.hidden_features=future"]),
}


def run_variant(name, overrides, args, seed):
    run_name = f"ablation_{name}_seed{seed}"
    run_dir = Path(args.run_dir) / run_name
    if (run_dir / "final_model.pt").is_file():
        return run_dir, None
    cmd = [sys.executable, str(ROOT / "ppo_training" / "train.py"), "--config", args.config, "--no_export",
           f"train.total_timesteps={args.budget}", f"run_name={run_name}", f"run_dir={args.run_dir}",
           f"seed={seed}"] + overrides + args.extra
    log = open(Path(args.run_dir) / f"{run_name}.log", "w")
    return run_dir, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--budget", type=int, default=1_500_000, help="env steps per run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--full_seeds", type=int, nargs="*", default=[], help="extra seeds of the full recipe")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ap.add_argument("--run_dir", default="runs")
    ap.add_argument("--out", default="docs/ablations.md")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every run")
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variants {unknown}; known: {list(VARIANTS)}")
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    pending = [(v, args.seed) for v in args.variants] + [("full", s) for s in args.full_seeds if s != args.seed]
    running = []
    results = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name, seed = pending.pop(0)
            run_dir, proc = run_variant(name, VARIANTS[name][1], args, seed)
            if proc is None:
                results[name, seed] = run_dir
            else:
                running.append(((name, seed), run_dir, proc))
        for item in list(running):
            name, run_dir, proc = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    print(f"{name}: exit {proc.returncode}, see {run_dir}.log", file=sys.stderr)
                results[name] = run_dir
        if running:
            time.sleep(5)
    rows = []
    seeds_of = {}
    for (name, seed), run_dir in results.items():
        stats_path = run_dir / "training_stats.npz"
        if stats_path.is_file():
            seeds_of.setdefault(name, []).append(float(np.load(stats_path)["val_cost_mean"][-1]))
    for name in args.variants:
        stats_path = results[name, args.seed] / "training_stats.npz"
        if not stats_path.is_file():
            rows.append((name, float("nan"), float("nan"), float("nan")))
            continue
        st = np.load(stats_path)
        val = st["val_cost_mean"]
        rows.append((name, float(val[-1]), float(np.nanmin(val)), float(st["wall_time"][-1]) / 60))
    full = dict((r[0], r[1]) for r in rows).get("full", float("nan"))
    lines = ["| variant | what it tests | final val cost | best val cost | vs full | minutes |",
             "|---|---|---|---|---|---|"]
    for name, final, best, minutes in rows:
        lines.append(f"| {name} | {VARIANTS[name][0]} | {final:.2f} | {best:.2f} | {final - full:+.2f} | {minutes:.1f} |")
    if len(seeds_of.get("full", [])) > 1:
        v = np.array(seeds_of["full"])
        lines += ["", f"full recipe over {len(v)} seeds: final val cost mean {v.mean():.2f}, "
                      f"std {v.std(ddof=1):.2f}, min {v.min():.2f}, max {v.max():.2f}"]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(
        {"variants": {name: {"final": f, "best": b, "minutes": m} for name, f, b, m in rows},
         "full_seeds": seeds_of.get("full", [])}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
