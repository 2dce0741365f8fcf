"""Ray overhead: sharded exact evaluation and distributed rollouts against one process, same cores.

    python -m bench.ray [--num_segs 100] [--num_workers 2] [--reps 3] [--train_envs 100]
                        [--train_backend torch_bf16] [--out bench/ray_results.json]

Like for like on this machine's cores: the single process uses `num_workers` threads, the
Ray side runs `num_workers` actors of one thread each on a local cluster of `num_workers` CPUs.

Evaluation (`eval`, per exact engine `onnx` and `torch_exact`): the official PID on the first
`num_segs` CSVs of data/ ('data/NNNNN.csv', the seed strings).
  local: `tp.run_batched` in this process, all segments in one batch, the engine with
         `num_workers` threads (`make_model(engine, num_threads=num_workers)`);
  ray:   `RayEvaluator(num_workers, backend=engine, num_threads=1).run(paths, 'pid')`:
         chunks dispatched to warm actors (started, models built and a 2-segment warm-up run
         before the timer), CSVs read by the workers, costs gathered in order.
The two alternate `reps` times (local, ray, local, ray, ...), so load from other processes
hits both alike. Per engine: wall seconds of every repetition, rollouts/s of the median,
`ratio` = local median wall / ray median wall (above 1: Ray is faster), `ratio_per_rep`,
and `identical_costs` (every per-segment cost of every Ray run == the local run's).
`startup_s` is the cold start: ray.init plus the actors' start and model load.

Training rollouts (`train`): `train.collect_rollout` on a LateralControlVecEnv of
`train_envs` envs (`train_backend` with num_workers threads) against
`RayRolloutGroup.collect` with num_workers actors of train_envs / num_workers envs (one
thread each), the same policy (the default ActorCritic with the PID base), `train_n_steps`
steps per env per rollout; rate = env steps per second of one rollout (policy, simulator,
observations, and for Ray the weight broadcast and the gathering of the batches).

Written atomically to `--out` with the machine (CPU, cores, load average at the start).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tinyphysics as tp  # noqa: E402
from bench import library_versions, machine_info, warm_up, write_json_atomic  # noqa: E402

ENGINES = ("onnx", "torch_exact")


def _log(msg: str) -> None:
    print(f"[bench.ray] {msg}", flush=True)


def measure_eval(engine: str, paths: Sequence[str], num_workers: int, reps: int, model_path: str) -> dict:
    """Alternating local / Ray timings of one exact engine on `paths` (see the module doc)."""
    from ppo_training.distributed import RayEvaluator
    from tinyphysics_torch import make_model
    local_model = make_model(engine, model_path, num_threads=num_workers)
    warm_up(local_model)
    t0 = time.perf_counter()
    ev = RayEvaluator(num_workers, model_path, backend=engine, num_threads=1)
    ev.run(paths[:num_workers], "pid")       # actors started and warm
    startup = time.perf_counter() - t0
    local_s: List[float] = []
    ray_s: List[float] = []
    identical = True
    try:
        for rep in range(reps):
            t0 = time.perf_counter()
            local_costs = tp.run_batched(local_model, list(paths), "pid", batch_size=len(paths))
            local_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ray_costs = ev.run(paths, "pid")
            ray_s.append(time.perf_counter() - t0)
            identical = identical and ray_costs == local_costs
            _log(f"{engine} rep {rep + 1}/{reps}: local {local_s[-1]:.2f} s, ray {ray_s[-1]:.2f} s")
    finally:
        ev.close()
        if hasattr(local_model, "close"):
            local_model.close()
    lm, rm = statistics.median(local_s), statistics.median(ray_s)
    n = len(paths)
    return {"engine": engine, "segments": n, "num_workers": num_workers,
            "local": {"description": f"run_batched, {engine}, {num_workers} threads, one process",
                      "wall_s": local_s, "median_s": lm, "rollouts_per_s": n / lm},
            "ray": {"description": f"RayEvaluator, {num_workers} actors x {engine} 1 thread",
                    "wall_s": ray_s, "median_s": rm, "rollouts_per_s": n / rm,
                    "rollouts_per_s_per_worker": n / rm / num_workers, "startup_s": startup},
            "ratio": lm / rm, "ratio_per_rep": [a / b for a, b in zip(local_s, ray_s)],
            "identical_costs": identical, "mean_total_cost": float(np.mean([c["total_cost"] for c in ray_costs]))}


def measure_train(backend: str, envs: int, n_steps: int, num_workers: int, reps: int, model_path: str,
                  train_files: str, seed: int) -> dict:
    """Env steps per second of one rollout: local collect_rollout against RayRolloutGroup.collect."""
    import torch

    from controllers.ppo import OBS_DIM
    from ppo_training.config import load_config, select_files
    from ppo_training.distributed import RayRolloutGroup
    from ppo_training.environment.lateral_env import LateralControlVecEnv
    from ppo_training.policy.actor_critic import ActorCritic
    from ppo_training.train import collect_rollout, pid_base_weights
    from ppo_training.utils.rollout_buffer import RolloutBuffer
    from tinyphysics_torch import make_model
    if envs % num_workers:
        raise SystemExit(f"error: --train_envs {envs} must be a multiple of --num_workers {num_workers}")
    segs = [tp.load_segment(p) for p in select_files("data", train_files)]
    torch.manual_seed(seed)
    policy = ActorCritic(OBS_DIM, 1, hidden_sizes=(128, 128), action_low=tp.STEER_RANGE[0],
                         action_high=tp.STEER_RANGE[1], init_log_std=-3.5, base_weights=pid_base_weights())
    policy.eval()
    buffer = RolloutBuffer(n_steps, envs, OBS_DIM, 1)
    model = make_model(backend, model_path, num_threads=num_workers)
    local = LateralControlVecEnv(model, segs, envs, seed=seed)
    obs_l, _ = local.reset()
    policy.update_obs_normalizer(torch.from_numpy(obs_l))
    start_l = np.ones(envs)
    gen = torch.Generator().manual_seed(seed + 1)
    cfg = load_config(None, [f"seed={seed}", f"env.num_envs={envs}", f"train.n_steps={n_steps}",
                             f"simulator.backend={backend}", "simulator.num_threads=1",
                             f"simulator.model_path={model_path}", "distributed.backend=ray",
                             f"distributed.num_workers={num_workers}"])
    t0 = time.perf_counter()
    group = RayRolloutGroup(cfg, segs)
    obs_r, _ = group.reset()
    startup = time.perf_counter() - t0
    start_r = np.ones(envs)
    steps = envs * n_steps
    local_s: List[float] = []
    ray_s: List[float] = []
    try:
        # one untimed rollout each: lazy initialisation (kernels, thread pools) is not timed
        obs_l, start_l, *_ = collect_rollout(policy, local, buffer, obs_l, start_l, gen)
        obs_r, start_r, *_ = group.collect(policy, buffer, obs_r, start_r)
        for rep in range(reps):
            t0 = time.perf_counter()
            obs_l, start_l, *_ = collect_rollout(policy, local, buffer, obs_l, start_l, gen)
            local_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            obs_r, start_r, *_ = group.collect(policy, buffer, obs_r, start_r)
            ray_s.append(time.perf_counter() - t0)
            _log(f"train rollout rep {rep + 1}/{reps}: local {local_s[-1]:.2f} s, ray {ray_s[-1]:.2f} s")
    finally:
        group.close()
        if hasattr(model, "close"):
            model.close()
    lm, rm = statistics.median(local_s), statistics.median(ray_s)
    return {"backend": backend, "envs": envs, "n_steps": n_steps, "num_workers": num_workers,
            "local": {"description": f"collect_rollout, LateralControlVecEnv of {envs} envs, {backend} "
                                     f"{num_workers} threads", "wall_s": local_s, "env_steps_per_s": steps / lm},
            "ray": {"description": f"RayRolloutGroup.collect, {num_workers} actors x {envs // num_workers} envs, "
                                   f"{backend} 1 thread", "wall_s": ray_s, "env_steps_per_s": steps / rm,
                    "env_steps_per_s_per_worker": steps / rm / num_workers, "startup_s": startup},
            "ratio": lm / rm, "ratio_per_rep": [a / b for a, b in zip(local_s, ray_s)]}


def format_report(result: dict) -> str:
    lines = [f"{'what':<34}{'local':>12}{'ray':>12}{'ray/local':>11}  exact"]
    for name, e in result["eval"].items():
        lines.append(f"{'eval ' + name + ' (rollouts/s)':<34}{e['local']['rollouts_per_s']:>12.2f}"
                     f"{e['ray']['rollouts_per_s']:>12.2f}{e['ratio']:>11.2f}  "
                     f"{'identical' if e['identical_costs'] else 'DIFFERENT'}")
    t = result.get("train")
    if t:
        lines.append(f"{'train rollout ' + t['backend'] + ' (steps/s)':<34}{t['local']['env_steps_per_s']:>12.0f}"
                     f"{t['ray']['env_steps_per_s']:>12.0f}{t['ratio']:>11.2f}")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.ray", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num_segs", type=int, default=100, help="first N segments of data/, sorted")
    ap.add_argument("--num_workers", type=int, default=2, help="Ray actors = threads of the local run")
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions per measurement")
    ap.add_argument("--engines", default="onnx,torch_exact", help="exact engines to compare, comma-separated")
    ap.add_argument("--train_envs", type=int, default=100, help="envs of the rollout measurement (0: skip it)")
    ap.add_argument("--train_n_steps", type=int, default=100)
    ap.add_argument("--train_backend", default="torch_bf16")
    ap.add_argument("--train_files", default="00000-00079")
    ap.add_argument("--model_path", default="models/tinyphysics.onnx")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/ray_results.json", help="JSON results (written atomically)")
    args = ap.parse_args(argv)
    for key in ("num_segs", "num_workers", "reps"):
        if getattr(args, key) < 1:
            ap.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    bad = [e for e in args.engines.split(",") if e not in ENGINES]
    if bad:
        ap.error(f"--engines: {bad} are not exact engines; choose from {ENGINES}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from ppo_training.distributed import DistributedError, require_ray
    try:
        ray = require_ray()
        paths = tp.list_segments("data", args.num_segs)
        tp.TinyPhysicsModel(args.model_path)
    except (DistributedError, tp.DataError, tp.ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"machine": machine_info(), "versions": {**library_versions(), "ray": ray.__version__},
              "args": vars(args), "eval": {}}
    started = not ray.is_initialized()
    if started:
        import logging
        ray.init(num_cpus=args.num_workers, include_dashboard=False, logging_level=logging.WARNING)
    try:
        for engine in args.engines.split(","):
            _log(f"eval {engine}: {len(paths)} segments, {args.reps} alternating repetitions")
            result["eval"][engine] = measure_eval(engine, paths, args.num_workers, args.reps, args.model_path)
        if args.train_envs:
            _log(f"train rollouts: {args.train_envs} envs x {args.train_n_steps} steps, {args.train_backend}")
            result["train"] = measure_train(args.train_backend, args.train_envs, args.train_n_steps,
                                            args.num_workers, args.reps, args.model_path, args.train_files, args.seed)
    finally:
        if started:
            ray.shutdown()
    print()
    print(format_report(result))
    write_json_atomic(result, Path(args.out))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
