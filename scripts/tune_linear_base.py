"""Tune a linear steering controller (PID + feedforward on the future plan) by a simple
evolution strategy on training segments; the result is a base for the residual PPO policy.

    python scripts/tune_linear_base.py --segments 00000-00039 --generations 20

Each candidate is a weight vector over a few observation features (controllers/ppo.py);
all candidates x segments run in one batched simulator call (torch_bf16 backend), and the
mean total_cost is minimised.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tinyphysics as tp  # noqa: E402
from controllers.ppo import OBS_DIM, OBS_NAMES, BatchController  # noqa: E402
from ppo_training.config import select_files  # noqa: E402
from tinyphysics_torch import make_model  # noqa: E402

IX = {n: i for i, n in enumerate(OBS_NAMES)}
FEATURES = ["error", "error_integral", "prev_target_1", "prev_lataccel_1", "target",
            "future_lataccel_1", "future_lataccel_2", "future_lataccel_3", "future_lataccel_5",
            "future_lataccel_8", "future_lataccel_13", "roll_lataccel", "future_roll_3",
            "prev_action_1"]


def pid_weights():
    from controllers.pid import D, I, P
    w = dict.fromkeys(FEATURES, 0.0)
    w["error"], w["error_integral"], w["prev_target_1"], w["prev_lataccel_1"] = P + D, I, -D, D
    return np.array([w[f] for f in FEATURES])


def evaluate(model, segs, paths, W):
    """W [K, F] candidate weights -> mean total_cost [K] over the segments."""
    K = len(W)
    full = np.zeros((K, OBS_DIM))
    full[:, [IX[f] for f in FEATURES]] = W
    rows_w = np.repeat(full, len(segs), axis=0)          # row r = candidate r // S
    all_segs = segs * K
    rngs = [np.random.RandomState(tp.segment_seed(p)) for p in paths] * K
    sim = tp.BatchedSimulator(model, all_segs, rngs=rngs)
    ctrl = BatchController(len(all_segs), lambda obs: np.clip(np.einsum("nd,nd->n", obs.astype(np.float64), rows_w), -2, 2))
    sim.rollout(ctrl)
    costs = np.array([c["total_cost"] for c in sim.costs()]).reshape(K, len(segs))
    return costs.mean(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data_dir", default="data")
    ap.add_argument("--segments", default="00000-00039")
    ap.add_argument("--generations", type=int, default=20)
    ap.add_argument("--popsize", type=int, default=12)
    ap.add_argument("--sigma", type=float, default=0.03)
    ap.add_argument("--backend", default="torch_bf16")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = select_files(args.data_dir, args.segments)
    segs = [tp.load_segment(p) for p in paths]
    model = make_model(args.backend, "models/tinyphysics.onnx", num_threads=2)
    rng = np.random.default_rng(args.seed)
    mean = pid_weights()
    sigma = args.sigma
    best = (evaluate(model, segs, paths, mean[None])[0], mean.copy())
    print(f"start (PID): {best[0]:.2f}", flush=True)
    for g in range(args.generations):
        t0 = time.time()
        eps = rng.standard_normal((args.popsize // 2, len(mean)))
        eps = np.concatenate([eps, -eps])                     # antithetic pairs
        W = np.concatenate([mean[None], mean + sigma * eps])
        f = evaluate(model, segs, paths, W)
        if f[0] < best[0]:
            best = (f[0], mean.copy())
        ranks = np.argsort(np.argsort(f[1:]))                  # 0 = best
        util = -(ranks - ranks.mean()) / len(ranks)           # centred rank utilities
        mean = mean + sigma * 2.0 * (util[:, None] * eps).sum(0) / len(eps) * 4
        print(f"gen {g:3d} mean-candidate {f[0]:.2f} best-pop {f[1:].min():.2f} "
              f"({time.time() - t0:.0f}s)  w=" + " ".join(f"{x:+.3f}" for x in mean), flush=True)
    print("best", best[0], dict(zip(FEATURES, np.round(best[1], 4).tolist())))


if __name__ == "__main__":
    main()
