"""Train a PPO steering controller on real segments, export it, and compare it with PID.

    python ppo_training/train.py --config ppo_training/config.yaml [key.sub=value ...]
    python ppo_training/train.py --resume runs/<run>/checkpoints/checkpoint_000040.pt

Steps (every PPO detail is in this file or the modules it names):
  1. Rollouts: `env.num_envs` segments replayed in `LateralControlVecEnv` (one simulator
     call per step for all envs), `train.n_steps` steps each, Gaussian actions from the
     actor, stored with values and log-probs in the RolloutBuffer.
  2. GAE(gamma, lambda) advantages and returns (utils/rollout_buffer.py).
  3. `ppo.n_epochs` epochs of minibatch PPO-Clip updates (policy/ppo_agent.py).
  4. Observation-normaliser update from the rollout (after the update, so the ratio of
     the first minibatch is exactly 1).
Before PPO, an optional behaviour-cloning warm start (`bc.*`) fits the actor to a teacher
controller (the official PID by default) and the critic to the teacher's returns.

Outputs in runs/<run_name>/: config.yaml, progress.csv and TensorBoard events,
checkpoints/checkpoint_<update>.pt (resumable), final_model.pt, best_model.pt (lowest
validation cost), training_stats.npz; the policy is exported to `export.output`, and the
run ends by printing the exact validation table (PPO vs the baseline).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
from collections import deque
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tinyphysics as tp  # noqa: E402
from controllers.ppo import OBS_DIM, OBS_NAMES  # noqa: E402
from ppo_training.config import ConfigError, load_config, parse_override, select_files, _merge, validate  # noqa: E402
from ppo_training.distributed import (DistributedError, check_checkpoint_backend, make_rollout_envs,  # noqa: E402
                                      total_envs)
from ppo_training.environment.lateral_env import LateralControlVecEnv  # noqa: E402
from ppo_training.eval import comparison_table, evaluate_policy, torch_policy  # noqa: E402
from ppo_training.policy.actor_critic import ActorCritic  # noqa: E402
from ppo_training.policy.ppo_agent import PPOAgent, PPOConfig  # noqa: E402
from ppo_training.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from ppo_training.utils.logger import Logger  # noqa: E402
from ppo_training.utils.rollout_buffer import RolloutBuffer  # noqa: E402
from tinyphysics_torch import make_model, resolve_backend  # noqa: E402

_IX = {name: i for i, name in enumerate(OBS_NAMES)}


def pid_teacher(obs: np.ndarray) -> np.ndarray:
    """The official PID's action from an observation [N, OBS_DIM] -> [N] (float32 inputs).

    error, its integral since step 20 and its previous value (target[s-1] - lat[s-2]) are
    all in the observation, so this is the PID up to float32 rounding of the features.
    """
    from controllers.pid import D, I, P
    o = obs.astype(np.float64)
    err = o[:, _IX["error"]]
    prev_err = o[:, _IX["prev_target_1"]] - o[:, _IX["prev_lataccel_1"]]
    return np.clip(P * err + I * o[:, _IX["error_integral"]] + D * (err - prev_err), *tp.STEER_RANGE)


TEACHERS = {"pid": pid_teacher}


def pid_base_weights() -> list:
    """The official PID as fixed linear weights on the raw observation [OBS_DIM]:
    P*error + I*error_integral + D*(error - (prev_target_1 - prev_lataccel_1))."""
    from controllers.pid import D, I, P
    w = np.zeros(OBS_DIM)
    w[_IX["error"]] = P + D
    w[_IX["error_integral"]] = I
    w[_IX["prev_target_1"]] = -D
    w[_IX["prev_lataccel_1"]] = D
    return w.tolist()


def base_weights(policy_cfg: dict):
    """The fixed linear base controller's weights [OBS_DIM] (None for base 'none').

    'pid': the official PID; 'linear': `policy.base_weights`, a {feature: weight} mapping
    over OBS_NAMES (e.g. PID plus feedforward on the future plan, tuned by
    scripts/tune_linear_base.py); unnamed features weigh 0."""
    base = policy_cfg["base"]
    if base == "none":
        return None
    if base == "pid":
        return pid_base_weights()
    w = np.zeros(OBS_DIM)
    for name, value in policy_cfg["base_weights"].items():
        w[_IX[name]] = value
    return w.tolist()


FEATURE_GROUPS = {"future": ("future_",), "history": ("prev_",)}


def input_mask(policy_cfg: dict):
    """[OBS_DIM] 0/1 weights hiding `policy.hidden_features` groups from the networks (None: all seen)."""
    groups = policy_cfg["hidden_features"]
    if not groups:
        return None
    groups = [groups] if isinstance(groups, str) else groups
    prefixes = tuple(p for g in groups for p in FEATURE_GROUPS[g])
    return [0.0 if name.startswith(prefixes) else 1.0 for name in OBS_NAMES]


def behaviour_clone(policy: ActorCritic, envs: LateralControlVecEnv, cfg: dict, gamma: float, logger: Logger):
    """Collect teacher episodes, fit the obs normaliser, the actor mean and the critic.

    Returns the obs the environments are at afterwards (their episodes go on in PPO)."""
    bc = cfg["bc"]
    if bc["teacher"] == "base":   # the initial policy's mean: its base (the residual starts near 0)
        def teacher(obs):
            with torch.no_grad():
                return policy.act_deterministic(torch.from_numpy(obs))[:, 0].numpy().astype(np.float64)
    else:
        teacher = TEACHERS[bc["teacher"]]
    n = envs.num_envs
    rounds = max(1, -(-bc["episodes"] // n))
    horizon = max(len(s) for s in envs.segments) - tp.CONTROL_START_IDX
    obs, _ = envs.reset()
    buf = RolloutBuffer(rounds * horizon, n, OBS_DIM, 1)
    teacher_costs = []
    episode_start = np.ones(n)
    for _ in range(rounds * horizon):
        act = teacher(obs)
        next_obs, rew, term, trunc, infos = envs.step(act[:, None])
        buf.add(obs, act[:, None], rew, episode_start, np.zeros(n), np.zeros(n))
        episode_start = (term | trunc).astype(np.float64)
        if "_episode_cost" in infos:
            teacher_costs.extend(infos["episode_cost"][infos["_episode_cost"]].tolist())
        obs = next_obs
    # Monte-Carlo discounted returns (values 0, lambda 1); unfinished episodes bootstrap 0.
    buf.compute_returns_and_advantage(np.zeros(n), episode_start, gamma, 1.0)
    X = torch.from_numpy(buf.observations.reshape(-1, OBS_DIM))
    A = torch.from_numpy(buf.actions.reshape(-1, 1))
    R = torch.from_numpy(buf.returns.reshape(-1))
    policy.update_obs_normalizer(X)
    gen = torch.Generator().manual_seed(cfg["seed"])
    actor_params = list(policy.actor_mean.parameters())
    opt = torch.optim.Adam(actor_params, lr=bc["learning_rate"])
    for epoch in range(bc["epochs"]):
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), bc["minibatch_size"]):
            idx = perm[i:i + bc["minibatch_size"]]
            loss = ((policy.action_mean(X[idx]) - A[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        bc_mse = float(((policy.action_mean(X) - A) ** 2).mean())
    vopt = torch.optim.Adam(policy.critic.parameters(), lr=bc["learning_rate"])
    for epoch in range(bc["value_epochs"]):
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), bc["minibatch_size"]):
            idx = perm[i:i + bc["minibatch_size"]]
            vloss = 0.5 * ((policy.get_value(X[idx]) - R[idx]) ** 2).mean()
            vopt.zero_grad()
            vloss.backward()
            vopt.step()
    logger.record("bc/action_mse", bc_mse)
    logger.record("bc/teacher_ep_cost_mean", float(np.mean(teacher_costs)) if teacher_costs else float("nan"))
    print(f"behaviour cloning: {len(X)} samples from {bc['teacher']} "
          f"(train-episode cost {np.mean(teacher_costs):.2f}), action MSE {bc_mse:.2e}")
    return obs


def collect_rollout(policy: ActorCritic, envs, buffer: RolloutBuffer, obs: np.ndarray,
                    episode_start: np.ndarray, sample_gen: torch.Generator):
    """Fill `buffer` (reset first) with `buffer.n_steps` steps of every env.

    obs: [N, OBS_DIM] current observations; episode_start: [N] 1.0 where obs starts an
    episode. Actions are Gaussian samples from `policy` with noise from `sample_gen`.
    Returns (obs, episode_start, last_values [N] tensor, finished-episode costs, their
    lengths): the state to continue from and what GAE needs to bootstrap.
    """
    buffer.reset()
    done_costs: list = []
    done_lens: list = []
    for _ in range(buffer.n_steps):
        with torch.no_grad():
            action, log_prob, _, value = policy.get_action_and_value(torch.from_numpy(obs), generator=sample_gen)
        next_obs, reward, terminated, truncated, infos = envs.step(action.numpy())
        buffer.add(obs, action, reward, episode_start, value, log_prob)
        episode_start = (terminated | truncated).astype(np.float64)
        obs = next_obs
        if "_episode_cost" in infos:
            done_costs.extend(infos["episode_cost"][infos["_episode_cost"]].tolist())
            done_lens.extend(infos["episode_len"][infos["_episode_len"]].tolist())
    with torch.no_grad():
        last_values = policy.get_value(torch.from_numpy(obs))
    return obs, episode_start, last_values, done_costs, done_lens


def synthetic_paths(data_cfg: dict) -> list:
    """The first `data.synthetic_num` synthetic segments of `data.synthetic_dir` ([] for 0).

    The directory is generated on first use (ppo_training/synthetic.py, fitted on the
    training files only, the validation files held out); an existing one is reused when its
    generator_report.json has the same seed and at least that many files."""
    num = data_cfg["synthetic_num"]
    if num == 0:
        return []
    from ppo_training import synthetic
    out = Path(data_cfg["synthetic_dir"])
    report = out / synthetic.REPORT_NAME
    meta = None
    if report.is_file():
        try:
            meta = json.loads(report.read_text())["meta"]
        except (ValueError, KeyError) as e:
            raise ConfigError(f"{report}: unreadable generator report ({e}); delete {out} to regenerate") from None
    if meta is None or meta["seed"] != data_cfg["synthetic_seed"] or meta["num"] < num:
        print(f"generating {num} synthetic segments in {out} (seed {data_cfg['synthetic_seed']})")
        try:
            synthetic.write_dataset(out, num, data_cfg["synthetic_seed"], fit_dir=data_cfg["data_dir"],
                                    fit_files=data_cfg["train_files"], heldout_files=data_cfg["val_files"],
                                    handover_model=None)
        except synthetic.SyntheticError as e:
            raise ConfigError(f"data.synthetic_dir {out}: {e}") from None
    return [str(out / f"{synthetic.FILE_PREFIX}{i:06d}.csv") for i in range(num)]


def make_run_dir(cfg: dict) -> Path:
    """runs/<run_name>; refuses to reuse a directory that already holds a run."""
    name = cfg["run_name"] or f"ppo_{_dt.datetime.now():%Y%m%d-%H%M%S}_seed{cfg['seed']}"
    run_dir = Path(cfg["run_dir"]) / name
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: already holds a run; choose another run_name or --resume a checkpoint")
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot create the run directory ({_os_problem(e)})") from None
    cfg["run_name"] = name
    return run_dir


def _os_problem(e: OSError) -> str:
    """'Not a directory: /x/file' for an OSError, naming the file it is about."""
    what = e.strerror or str(e)
    return f"{what}: {e.filename}" if e.filename else what


def check_output_path(path: str, key: str) -> None:
    """Fail before training when `path` can never be written: its nearest existing
    ancestor is not a directory (e.g. export.output = 'some_file/policy.onnx')."""
    parent = Path(path).resolve().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key} {path}: cannot be written, {parent} is not a directory")


def prepare_resume(run_dir: Path, global_step: int) -> None:
    """Undo what a killed run wrote after its checkpoint: temp files of an interrupted
    atomic write, and progress.csv rows past `global_step` (a torn last row included),
    so that the resumed run's progress.csv is the one of an uninterrupted run."""
    for pattern in ("checkpoints/.*.tmp", ".*.tmp", "*.yaml.tmp"):
        for tmp in run_dir.glob(pattern):
            tmp.unlink()
    progress = run_dir / "progress.csv"
    if not progress.is_file():
        return
    with open(progress, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    keep = [r for r in body if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= global_step]
    if len(keep) != len(body):
        tmp = progress.with_name(progress.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([header] + keep)
        os.replace(tmp, progress)


def write_yaml_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(obj, sort_keys=False))
    os.replace(tmp, path)


def export_policy(policy: ActorCritic, cfg: dict, output: str) -> None:
    from ppo_training.export_onnx import export
    export(policy, output, training_config=cfg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML config (see ppo_training/config.py for every key)")
    ap.add_argument("--resume", default=None, help="checkpoint_*.pt to continue from (its config is used)")
    ap.add_argument("--no_export", action="store_true", help="do not write the ONNX policy")
    ap.add_argument("overrides", nargs="*", help="config overrides key.sub=value, e.g. ppo.learning_rate=1e-4")
    args = ap.parse_intermixed_args(argv)  # overrides may stand before or after the options

    try:
        ckpt = None
        if args.resume:
            ckpt = load_checkpoint(args.resume)
            cfg = ckpt["config"]
            for text in args.overrides:
                _merge(cfg, parse_override(text), f"override {text!r}")
            validate(cfg, "resumed config")
            check_checkpoint_backend(cfg, ckpt)
        else:
            cfg = load_config(args.config, args.overrides)
        # Inputs are checked before the run directory is created: a run that cannot start
        # leaves nothing behind (an empty run dir would block a retry with the same name).
        train_paths = select_files(cfg["data"]["data_dir"], cfg["data"]["train_files"])
        val_paths = select_files(cfg["data"]["data_dir"], cfg["data"]["val_files"])
        sim_cfg = cfg["simulator"]
        # Exact engine for validation and the final table; the training backend may be approximate.
        model = make_model(sim_cfg["eval_backend"], sim_cfg["model_path"], num_threads=sim_cfg["num_threads"])
        train_model = (model if sim_cfg["backend"] == sim_cfg["eval_backend"] else
                       make_model(sim_cfg["backend"], sim_cfg["model_path"], num_threads=sim_cfg["num_threads"]))
        if sim_cfg["backend"] == "auto":
            print(f"simulator.backend auto: {resolve_backend('auto')} on this CPU", flush=True)
        train_paths = train_paths + synthetic_paths(cfg["data"])
        train_segs = [tp.load_segment(p) for p in train_paths]
        for p in val_paths:
            tp.load_segment(p)
        if not args.no_export:
            check_output_path(cfg["export"]["output"], "export.output")
        if ckpt is not None:
            run_dir = Path(args.resume).resolve().parent.parent
            prepare_resume(run_dir, ckpt["global_step"])
        else:
            run_dir = make_run_dir(cfg)
    except (ConfigError, CheckpointError, tp.DataError, tp.ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    write_yaml_atomic(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(cfg["torch_threads"])
    ppo_cfg = PPOConfig.from_dict(cfg["ppo"])
    tcfg = cfg["train"]
    num_envs, n_steps = total_envs(cfg), tcfg["n_steps"]
    batch_size = num_envs * n_steps
    num_updates = max(1, tcfg["total_timesteps"] // batch_size)

    try:  # LateralControlVecEnv, or Ray rollout actors with distributed.backend=ray
        envs = make_rollout_envs(cfg, train_model, train_segs)
    except DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    distributed = cfg["distributed"]["backend"] == "ray"
    policy = ActorCritic(OBS_DIM, 1, hidden_sizes=tuple(cfg["policy"]["hidden_sizes"]),
                         activation=cfg["policy"]["activation"], action_low=tp.STEER_RANGE[0],
                         action_high=tp.STEER_RANGE[1], init_log_std=cfg["policy"]["init_log_std"],
                         base_weights=base_weights(cfg["policy"]), normalize_obs=cfg["policy"]["normalize_obs"],
                         input_mask=input_mask(cfg["policy"]))
    agent = PPOAgent(policy, ppo_cfg, seed=cfg["seed"])
    buffer = RolloutBuffer(n_steps, num_envs, OBS_DIM, 1)
    sample_gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    logger = Logger(run_dir, purge_step=ckpt["global_step"] + 1 if ckpt is not None else None)
    stats = {"update": [], "global_step": [], "wall_time": [], "ep_cost_mean": [], "val_cost_mean": [],
             "approx_kl": [], "clip_fraction": [], "explained_variance": []}
    start_update, global_step, best_val, elapsed0 = 1, 0, float("inf"), 0.0

    if ckpt is not None:
        agent.load_state_dict(ckpt["agent"])
        envs.load_state_dict(ckpt["env"])
        sample_gen.set_state(ckpt["sample_gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        obs, episode_start = ckpt["obs"], ckpt["episode_start"]
        start_update, global_step = ckpt["update"] + 1, ckpt["global_step"]
        best_val, stats, elapsed0 = ckpt["best_val"], ckpt["stats"], ckpt["wall_time"]
        print(f"resumed {args.resume} at update {ckpt['update']} ({global_step} steps)")
    else:
        if cfg["bc"]["enabled"]:
            obs = behaviour_clone(policy, envs, cfg, ppo_cfg.gamma, logger)
        else:
            obs, _ = envs.reset()
            policy.update_obs_normalizer(torch.from_numpy(obs))
        episode_start = np.ones(num_envs)

    baseline_costs = tp.run_batched(model, val_paths, cfg["eval"]["baseline"])
    baseline_mean = float(np.mean([c["total_cost"] for c in baseline_costs]))

    def validate_now() -> float:
        policy.eval()
        costs = evaluate_policy(model, val_paths, torch_policy(policy))
        policy.train()
        return float(np.mean([c["total_cost"] for c in costs]))

    def checkpoint(update: int, path: Path) -> Path:
        return save_checkpoint({
            "policy": policy.state_dict(), "policy_config": policy.config, "agent": agent.state_dict(),
            "env": envs.state_dict(), "obs": obs, "episode_start": episode_start,
            "sample_gen": sample_gen.get_state(), "torch_rng": torch.get_rng_state(),
            "update": update, "global_step": global_step, "best_val": best_val, "stats": stats,
            "ep_costs": list(ep_costs), "ep_lens": list(ep_lens),
            "wall_time": elapsed0 + time.time() - t_start, "config": cfg}, path)

    from tqdm import tqdm
    t_start = time.time()
    bar = tqdm(total=num_updates * batch_size, initial=(start_update - 1) * batch_size, unit="step",
               dynamic_ncols=True, desc="ppo")
    ep_costs: deque = deque(ckpt["ep_costs"] if ckpt is not None else [], maxlen=100)  # SB3: last 100 episodes
    ep_lens: deque = deque(ckpt.get("ep_lens", []) if ckpt is not None else [], maxlen=100)
    val_cost = stats["val_cost_mean"][-1] if stats["val_cost_mean"] else float("nan")
    update = start_update - 1
    completed, completed_step = start_update - 1, global_step   # the last update whose results are in `stats`
    try:
        for update in range(start_update, num_updates + 1):
            t_rollout = time.time()
            agent.set_learning_rate(1.0 - (update - 1) / num_updates)
            # 1. rollout
            policy.eval()
            if distributed:   # every actor runs collect_rollout on its envs with its own generator
                obs, episode_start, last_values, done_costs, done_lens = envs.collect(
                    policy, buffer, obs, episode_start)
            else:
                obs, episode_start, last_values, done_costs, done_lens = collect_rollout(
                    policy, envs, buffer, obs, episode_start, sample_gen)
            ep_costs.extend(done_costs)
            ep_lens.extend(done_lens)
            global_step += batch_size
            # 2. GAE
            buffer.compute_returns_and_advantage(last_values, episode_start, ppo_cfg.gamma, ppo_cfg.gae_lambda)
            # 3. PPO update, 4. normaliser update
            policy.train()
            t_update = time.time()
            train_stats = agent.update(buffer)
            policy.update_obs_normalizer(torch.from_numpy(buffer.observations.reshape(-1, OBS_DIM)))
            t_end = time.time()
            bar.update(batch_size)

            # logging, evaluation, checkpoints
            # TensorBoard names as in Stable-Baselines3
            for k, v in train_stats.items():
                name = {"policy_loss": "policy_gradient_loss", "n_epochs_done": "n_epochs"}.get(k, k)
                if k == "entropy":
                    name, v = "entropy_loss", -v
                logger.record(f"train/{name}", v)
            if ep_costs:
                logger.record("rollout/ep_cost_mean", float(np.mean(ep_costs)))
                logger.record("rollout/ep_rew_mean", -cfg["env"]["reward_scale"] * float(np.mean(ep_costs)))
                logger.record("rollout/ep_len_mean", float(np.mean(ep_lens)))
            logger.record("time/fps", batch_size / (t_end - t_rollout))
            logger.record("time/rollout_s", t_update - t_rollout)
            logger.record("time/update_s", t_end - t_update)
            logger.record("time/total_timesteps", global_step)
            logger.record("time/wall_time", elapsed0 + time.time() - t_start)
            is_last = update == num_updates
            if (tcfg["eval_interval"] and update % tcfg["eval_interval"] == 0) or is_last:
                val_cost = validate_now()
                logger.record("eval/val_cost_mean", val_cost)
                logger.record("eval/baseline_cost_mean", baseline_mean)
                logger.record("eval/ratio_vs_baseline", val_cost / baseline_mean)
                if val_cost < best_val:
                    best_val = val_cost
                    save_checkpoint({"policy": policy.state_dict(), "policy_config": policy.config,
                                     "update": update, "val_cost": val_cost, "config": cfg}, run_dir / "best_model.pt")
            stats["update"].append(update)
            stats["global_step"].append(global_step)
            stats["wall_time"].append(elapsed0 + time.time() - t_start)
            stats["ep_cost_mean"].append(float(np.mean(ep_costs)) if ep_costs else float("nan"))
            stats["val_cost_mean"].append(val_cost)
            for k in ("approx_kl", "clip_fraction", "explained_variance"):
                stats[k].append(train_stats[k])
            completed, completed_step = update, global_step
            bar.set_postfix(ep_cost=f"{stats['ep_cost_mean'][-1]:.1f}", val=f"{val_cost:.1f}",
                            sps=f"{batch_size / (t_end - t_rollout):.0f}")
            if tcfg["log_interval"] and update % tcfg["log_interval"] == 0:
                logger.dump(global_step)
            if tcfg["checkpoint_interval"] and update % tcfg["checkpoint_interval"] == 0:
                checkpoint(update, run_dir / "checkpoints" / f"checkpoint_{update:06d}.pt")
    except KeyboardInterrupt:
        # Labelled with the last finished update: an update cut short is redone on resume
        # (from the environments' current state; Ctrl-C is not a bit-exact resume point).
        bar.close()
        global_step = completed_step
        path = checkpoint(completed, run_dir / "checkpoints" / f"checkpoint_{completed:06d}_interrupted.pt")
        print(f"\ninterrupted after update {completed}; checkpoint saved to {path}\n"
              f"continue with: python ppo_training/train.py --resume {path}")
        return 130
    except CheckpointError as e:   # e.g. a full disk: the earlier checkpoints are intact
        bar.close()
        logger.close()
        print(f"error: {e}\ntraining stopped after update {completed}", file=sys.stderr)
        return 2
    bar.close()
    logger.close()

    try:
        checkpoint(num_updates, run_dir / "final_model.pt")
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if distributed:
        envs.close()
    np.savez(run_dir / "training_stats.npz", **{k: np.asarray(v) for k, v in stats.items()})
    if not args.no_export:
        export_policy(policy, cfg, cfg["export"]["output"])
        print(f"exported policy: {cfg['export']['output']}")

    policy.eval()
    final_costs = evaluate_policy(model, val_paths, torch_policy(policy))
    print(f"\nrun directory: {run_dir}")
    print(f"validation segments: {cfg['data']['val_files']} ({len(val_paths)}), exact simulator")
    print(comparison_table(["ppo", cfg["eval"]["baseline"]], [final_costs, baseline_costs]))
    wins = sum(c["total_cost"] < b["total_cost"] for c, b in zip(final_costs, baseline_costs))
    print(f"ppo beats {cfg['eval']['baseline']} on {wins}/{len(val_paths)} validation segments; "
          f"training time {elapsed0 + time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
