"""Evaluate a trained policy with the exact simulator and compare it with a baseline.

    python ppo_training/eval.py --model_path runs/<run>/final_model.pt --data_path ./data --num_segs 100
    python ppo_training/eval.py --model_path models/ppo_policy.onnx --data_path ./data --num_segs 100
    python ppo_training/eval.py --model_path models/ppo_policy.onnx --num_segs 5000 --backend ray --num_workers 8

With --backend ray the segments are sharded across Ray workers (ppo_training/distributed.py,
`pip install '.[ray]'`); the per-segment costs are the same, in the same order.

Writes per-segment costs to CSV (default: next to the model, <model>_eval_costs.csv),
prints the mean costs of the policy and of the baseline (pid) on the same segments and
their ratio, and writes report.html (cost histograms, averages, sample rollouts).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, List, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tinyphysics as tp  # noqa: E402
from controllers.ppo import BatchController, PolicyRunner  # noqa: E402


def torch_policy(policy) -> Callable[[np.ndarray], np.ndarray]:
    """Deterministic steer of a torch ActorCritic as a numpy callable obs [N,D] -> [N]."""
    import torch

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = policy.act_deterministic(torch.from_numpy(obs))
        return out[:, 0].double().numpy()
    return act


def load_policy(path) -> Callable[[np.ndarray], np.ndarray]:
    """A policy callable from an exported .onnx or a trainer .pt (checkpoint or final model)."""
    path = str(path)
    if path.endswith(".onnx"):
        return PolicyRunner(path)
    from ppo_training.policy.actor_critic import ActorCritic
    from ppo_training.utils.checkpoint import load_checkpoint
    ckpt = load_checkpoint(path)
    policy = ActorCritic(**ckpt["policy_config"])
    policy.load_state_dict(ckpt["policy"])
    policy.eval()
    return torch_policy(policy)


def evaluate_policy(model: tp.TinyPhysicsModel, paths: Sequence[str], policy, batch_size: int = 1000,
                    keep_histories: bool = False):
    """Exact per-segment costs of a policy callable (or ONNX path) on `paths`.

    Runs controllers.ppo.BatchController in the exact BatchedSimulator, i.e. the very
    code path of the shipped controller. Returns list of cost dicts (and histories
    (target, lataccel, action) per segment with keep_histories).
    """
    costs: List[dict] = []
    hist = []
    for i in range(0, len(paths), batch_size):
        segs = [tp.load_segment(p) for p in paths[i:i + batch_size]]
        sim = tp.BatchedSimulator(model, segs)
        costs.extend(sim.rollout(BatchController(len(segs), policy=policy)))
        if keep_histories:
            for r, seg in enumerate(segs):
                T = len(seg)
                hist.append((sim.target[r, :T].copy(), sim.lataccel[r, :T].copy(), sim.action[r, :T].copy()))
    return (costs, hist) if keep_histories else costs


def comparison_table(names: Sequence[str], results: Sequence[Sequence[dict]]) -> str:
    """A plain-text table of mean costs per controller, with the total ratio to the last one."""
    base = np.mean([c["total_cost"] for c in results[-1]])
    lines = [f"{'controller':<14}{'lataccel_cost':>14}{'jerk_cost':>12}{'total_cost':>12}{'vs ' + names[-1]:>10}"]
    for name, costs in zip(names, results):
        m = {k: np.mean([c[k] for c in costs]) for k in ("lataccel_cost", "jerk_cost", "total_cost")}
        lines.append(f"{name:<14}{m['lataccel_cost']:>14.4f}{m['jerk_cost']:>12.4f}{m['total_cost']:>12.4f}"
                     f"{m['total_cost'] / base:>10.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_path", required=True, help="final_model.pt, checkpoint_*.pt or an exported .onnx")
    ap.add_argument("--data_path", default="./data")
    ap.add_argument("--num_segs", type=int, default=100)
    ap.add_argument("--sim_model_path", default="./models/tinyphysics.onnx")
    ap.add_argument("--baseline", default="pid")
    ap.add_argument("--costs_csv", default=None)
    ap.add_argument("--report", default=None, help="write an HTML report here (default: none)")
    ap.add_argument("--backend", choices=("local", "ray"), default="local",
                    help="ray: shard the segments across Ray workers (pip install '.[ray]'); same costs")
    ap.add_argument("--num_workers", type=int, default=2, help="Ray workers (one CPU each) with --backend ray")
    ap.add_argument("--address", default=None,
                    help="Ray cluster to join ('auto' or HOST:PORT); default: start a local one")
    args = ap.parse_args(argv)
    from ppo_training.distributed import DistributedError
    from ppo_training.utils.checkpoint import CheckpointError
    if args.num_workers < 1:
        print(f"error: --num_workers must be at least 1, got {args.num_workers}", file=sys.stderr)
        return 2
    try:
        model = tp.TinyPhysicsModel(args.sim_model_path)
        paths = tp.list_segments(args.data_path, args.num_segs)
        policy = load_policy(args.model_path)   # checked here, with the file named, before any worker starts
        if args.backend == "ray":
            from ppo_training.distributed import PolicyFile, RayEvaluator
            with RayEvaluator(args.num_workers, args.sim_model_path, address=args.address) as ev:
                costs, hist = ev.run(paths, PolicyFile(args.model_path), keep_histories=True)
                base, base_hist = ev.run(paths, args.baseline, keep_histories=True)
        else:
            costs, hist = evaluate_policy(model, paths, policy, keep_histories=True)
            base, base_hist = tp.run_batched(model, paths, args.baseline, keep_histories=True)
    except (tp.DataError, tp.ModelError, CheckpointError, ValueError, DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = [Path(p).name for p in paths]
    out = args.costs_csv or str(Path(args.model_path).with_suffix("")) + "_eval_costs.csv"
    tp.write_costs_csv(out, names, costs)
    print(f"per-segment costs: {out}")
    print(comparison_table(["ppo", args.baseline], [costs, base]))
    wins = sum(c["total_cost"] < b["total_cost"] for c, b in zip(costs, base))
    print(f"ppo beats {args.baseline} on {wins}/{len(paths)} segments")
    print(tp.summary_line(costs))
    if args.report:
        import pandas as pd

        import eval as challenge_eval
        rows = [{"segment": n, "controller": ctrl, "role": role, **c}
                for role, ctrl, res in (("test", "ppo", costs), ("baseline", args.baseline, base))
                for n, c in zip(names, res)]
        html = challenge_eval.create_report(pd.DataFrame(rows), {"test": hist, "baseline": base_hist},
                                            "ppo", args.baseline)
        challenge_eval.write_report(args.report, html)
        print(f"Report saved to: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
