"""Tune a linear steering controller (PID + feedforward on the future plan) by a simple
evolution strategy on training segments; the result is a base for the residual PPO policy.

    python scripts/tune_linear_base.py --segments 00000-00039 --generations 20
    python scripts/tune_linear_base.py --init_config ppo_training/configs/ff_residual.yaml --sigma 0.01
    python scripts/tune_linear_base.py --init_config ppo_training/configs/ff_residual.yaml \
        --extra_features future_lataccel_20,prev_action_2 --batch_segments 40

Each candidate is a weight vector over a few observation features (controllers/ppo.py):
FEATURES, plus any named by --extra_features (they start at 0 unless the start config sets them).
All candidates x segments run in one batched simulator call, each row with its own RNG
seeded as the official harness seeds that segment, and the mean total_cost is minimised.
With --batch_segments N each generation scores its candidates on N segments drawn afresh (the
same N for all candidates of that generation); the start and the final mean are scored on all.
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


def pid_weights(features=FEATURES):
    """The official PID as a start point [F] (ppo_training.train.pid_base_weights)."""
    from ppo_training.train import pid_base_weights
    return np.asarray(pid_base_weights())[[IX[f] for f in features]]


def config_weights(path, features=FEATURES):
    """The start point [F] over `features` from a config's linear base (ppo_training.train.base_weights)."""
    from ppo_training.train import base_weights
    policy = load_config(path)["policy"]
    if policy["base"] != "linear":
        raise SystemExit(f"{path}: policy.base is {policy['base']!r}, not 'linear'")
    full = np.asarray(base_weights(policy))
    untuned = sorted(set(OBS_NAMES[i] for i in np.flatnonzero(full)) - set(features))
    if untuned:
        raise SystemExit(f"{path}: base_weights on features this run does not tune: {untuned} "
                         "(add them with --extra_features)")
    return full[[IX[f] for f in features]]


def feature_list(extra):
    """FEATURES plus the comma-separated `extra` names (OBS_NAMES); unknown or repeated names exit."""
    names = [x.strip() for x in (extra or "").split(",") if x.strip()]
    unknown = [x for x in names if x not in IX]
    if unknown:
        raise SystemExit(f"--extra_features: not observation features: {unknown} (see controllers/ppo.py OBS_NAMES)")
    if len(set(names)) != len(names):
        raise SystemExit(f"--extra_features: a name is repeated: {names}")
    return FEATURES + [x for x in names if x not in FEATURES]


def generation_segments(rng, num_segments, batch_segments):
    """Indices of the segments one generation is scored on: all (batch_segments 0 or >= num_segments),
    else batch_segments distinct ones drawn afresh from `rng`, sorted."""
    if 0 < batch_segments < num_segments:
        return np.sort(rng.choice(num_segments, batch_segments, replace=False))
    return np.arange(num_segments)


def evaluate(model, segs, paths, W, features=FEATURES):
    """W [K, F] candidate weights over `features` -> mean total_cost [K] over the segments."""
    K = len(W)
    full = np.zeros((K, OBS_DIM))
    full[:, [IX[f] for f in features]] = W
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
    ap.add_argument("--extra_features", default="", help="comma-separated OBS_NAMES tuned besides FEATURES")
    ap.add_argument("--batch_segments", type=int, default=0,
                    help="score each generation on this many segments drawn afresh (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    features = feature_list(args.extra_features)
    paths = select_files(args.data_dir, args.segments)
    segs = [tp.load_segment(p) for p in paths]
    model = make_model(args.backend, "models/tinyphysics.onnx", num_threads=args.num_threads)
    rng = np.random.default_rng(args.seed)
    mean = config_weights(args.init_config, features) if args.init_config else pid_weights(features)
    sigma = args.sigma
    best = (evaluate(model, segs, paths, mean[None], features)[0], mean.copy())
    print(f"start: {best[0]:.3f}", flush=True)
    for g in range(args.generations):
        t0 = time.time()
        eps = rng.standard_normal((args.popsize // 2, len(mean)))
        eps = np.concatenate([eps, -eps])                     # antithetic pairs
        W = np.concatenate([mean[None], mean + sigma * eps])
        pick = generation_segments(rng, len(segs), args.batch_segments)
        f = evaluate(model, [segs[i] for i in pick], [paths[i] for i in pick], W, features)
        if len(pick) == len(segs) and f[0] < best[0]:          # only a score on all segments may be the best
            best = (f[0], mean.copy())
        ranks = np.argsort(np.argsort(f[1:]))                  # 0 = best
        util = -(ranks - ranks.mean()) / len(ranks)           # centred rank utilities
        mean = mean + sigma * args.lr * (util[:, None] * eps).sum(0) / len(eps)
        print(f"gen {g:3d} mean-candidate {f[0]:.3f} best-pop {f[1:].min():.3f} ({time.time() - t0:.0f}s)  w="
              + " ".join(f"{x:+.4f}" for x in mean), flush=True)
    f = evaluate(model, segs, paths, mean[None], features)[0]
    print(f"final mean on all segments: {f:.3f}", flush=True)
    if f < best[0]:
        best = (f, mean.copy())
    print(f"best mean candidate: {best[0]:.3f}\nbase_weights:")
    for name, w in zip(features, best[1]):
        print(f"  {name}: {w:.4f}")


if __name__ == "__main__":
    main()
