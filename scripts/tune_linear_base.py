"""Tune a linear steering controller (PID + feedforward on the future plan) by a simple
evolution strategy on training segments; the result is a base for the residual PPO policy.

    python scripts/tune_linear_base.py --segments 00000-00039 --generations 20
    python scripts/tune_linear_base.py --init_config ppo_training/configs/ff_residual.yaml --sigma 0.01

Each candidate is a weight vector over a few observation features (controllers/ppo.py).
All candidates x segments run in one batched simulator call, each row with its own RNG
seeded as the official harness seeds that segment, and the mean total_cost is minimised.
Prints the best mean candidate as YAML for the config's policy.base_weights.
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
from ppo_training.config import load_config, select_files  # noqa: E402
from tinyphysics_torch import make_model  # noqa: E402

IX = {n: i for i, n in enumerate(OBS_NAMES)}
FEATURES = ["error", "error_integral", "prev_target_1", "prev_lataccel_1", "target",
            "future_lataccel_1", "future_lataccel_2", "future_lataccel_3", "future_lataccel_5",
            "future_lataccel_8", "future_lataccel_13", "roll_lataccel", "future_roll_3",
            "prev_action_1"]


def pid_weights():
    """The official PID as a start point [F] (ppo_training.train.pid_base_weights)."""
    from ppo_training.train import pid_base_weights
    return np.asarray(pid_base_weights())[[IX[f] for f in FEATURES]]


def config_weights(path):
    """The start point [F] from a config's linear base (ppo_training.train.base_weights)."""
    from ppo_training.train import base_weights
    policy = load_config(path)["policy"]
    if policy["base"] != "linear":
        raise SystemExit(f"{path}: policy.base is {policy['base']!r}, not 'linear'")
    full = np.asarray(base_weights(policy))
    untuned = sorted(set(OBS_NAMES[i] for i in np.flatnonzero(full)) - set(FEATURES))
    if untuned:
        raise SystemExit(f"{path}: base_weights on features this script does not tune: {untuned}")
    return full[[IX[f] for f in FEATURES]]


def evaluate(model, segs, paths, W):
    """W [K, F] candidate weights -> mean total_cost [K] over the segments."""
    K = len(W)
    full = np.zeros((K, OBS_DIM))
    full[:, [IX[f] for f in FEATURES]] = W
    rows_w = np.repeat(full, len(segs), axis=0)          # row r = candidate r // S
    all_segs = segs * K
    # one RNG per row, seeded as the official harness seeds its segment (a list repeated with
    # `* K` would share each RNG among the K candidates and mix their draws)
    rngs = [np.random.RandomState(tp.segment_seed(p)) for _ in range(K) for p in paths]
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
    ap.add_argument("--lr", type=float, default=8.0, help="step size of the mean, in units of sigma")
    ap.add_argument("--backend", default="auto", help="simulator engine (tinyphysics_torch.make_model)")
    ap.add_argument("--num_threads", type=int, default=2)
    ap.add_argument("--init_config", help="start from this config's linear base instead of the PID")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = select_files(args.data_dir, args.segments)
    segs = [tp.load_segment(p) for p in paths]
    model = make_model(args.backend, "models/tinyphysics.onnx", num_threads=args.num_threads)
    rng = np.random.default_rng(args.seed)
    mean = config_weights(args.init_config) if args.init_config else pid_weights()
    sigma = args.sigma
    best = (evaluate(model, segs, paths, mean[None])[0], mean.copy())
    print(f"start: {best[0]:.3f}", flush=True)
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
        mean = mean + sigma * args.lr * (util[:, None] * eps).sum(0) / len(eps)
        print(f"gen {g:3d} mean-candidate {f[0]:.3f} best-pop {f[1:].min():.3f} ({time.time() - t0:.0f}s)  w="
              + " ".join(f"{x:+.4f}" for x in mean), flush=True)
    f = evaluate(model, segs, paths, mean[None])[0]
    if f < best[0]:
        best = (f, mean.copy())
    print(f"best mean candidate: {best[0]:.3f}\nbase_weights:")
    for name, w in zip(FEATURES, best[1]):
        print(f"  {name}: {w:.4f}")


if __name__ == "__main__":
    main()
