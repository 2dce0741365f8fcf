"""Training configuration: defaults, YAML loading, command-line overrides, validation.

A config is a nested dict with the sections of DEFAULTS. A YAML file overrides any
subset of it; `key.sub=value` strings on the command line override that (values are
parsed as YAML, so `ppo.learning_rate=1e-4`, `policy.hidden_sizes=[64,64]`). Unknown
sections/keys and out-of-range values raise ConfigError naming the file and the key.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from ppo_training.policy.ppo_agent import PPOConfig
from tinyphysics_torch import BACKENDS

DEFAULTS: dict = {
    "seed": 1,
    "run_dir": "runs",            # runs/<run_name>/ holds checkpoints, logs, stats, config
    "run_name": None,             # default: ppo_<YYYYmmdd-HHMMSS>_seed<seed>
    "torch_threads": 1,           # torch intra-op threads (policy + update)
    "data": {
        "data_dir": "data",
        "train_files": "00000-00079",   # inclusive range of file stems, or a list of names
        "val_files": "00080-00099",
        "synthetic_num": 0,        # synthetic segments added to the training pool (0: real only)
        "synthetic_dir": "data/synthetic",   # generated there on first use (ppo_training/synthetic.py)
        "synthetic_seed": 0,
    },
    "simulator": {
        "model_path": "models/tinyphysics.onnx",
        "backend": "onnx",         # training rollouts: onnx | torch_exact | torch_fp32 | torch_bf16 |
                                   # torch_bf16_compiled | auto (torch_bf16_compiled with native bf16, else onnx)
        "eval_backend": "onnx",    # validation (exact engines only): onnx | torch_exact
        "num_threads": 1,          # onnxruntime intra-op threads / torch worker threads
    },
    "env": {
        "num_envs": 32,
        "reward_scale": 1.0,       # episode return = -reward_scale * total_cost
        "reward_mode": "sampled",  # sampled: the drawn lataccel's step cost; expected: its mean
                                   # over the simulator's distribution (same expected return, less noise)
    },
    "train": {
        "total_timesteps": 2_000_000,
        "n_steps": 200,            # steps per env per rollout (batch = n_steps * num_envs)
        "eval_interval": 10,       # updates between exact validation runs (0: only at the end)
        "checkpoint_interval": 10,  # updates between checkpoints
        "log_interval": 1,
    },
    "ppo": PPOConfig().to_dict(),
    "policy": {
        "hidden_sizes": [128, 128],
        "activation": "tanh",
        "init_log_std": -3.5,
        "base": "pid",             # residual on top of this fixed controller: pid | linear | none
        "base_weights": None,      # base "linear": {observation feature: weight}, e.g. from
                                   # scripts/tune_linear_base.py (PID + feedforward on the plan)
        "normalize_obs": True,     # running mean/std normalisation of the network's inputs
        "hidden_features": None,   # ablation: feature groups the networks do not see: future | history
    },
    "bc": {                        # behaviour-cloning warm start from a teacher controller
        "enabled": True,
        "teacher": "pid",          # pid | base (the residual policy's base controller)
        "episodes": 64,            # teacher episodes collected (in batches of env.num_envs)
        "epochs": 0,               # actor epochs (0: the residual policy starts at its base)
        "minibatch_size": 1024,
        "learning_rate": 1e-3,
        "value_epochs": 30,        # critic fitted to the teacher's discounted returns
    },
    "export": {
        "output": "models/ppo_policy.onnx",
    },
    "eval": {
        "baseline": "pid",
    },
    "distributed": {               # rollouts on Ray actors (pip install '.[ray]'); see ppo_training/distributed.py
        "backend": "local",        # local: one process | ray: num_workers rollout actors
        "num_workers": 2,          # rollout actors (one CPU each)
        "envs_per_worker": None,   # envs per actor; null: env.num_envs / num_workers
        "address": None,           # null: start a local Ray cluster; 'auto' or 'HOST:PORT': join one
        "max_restarts": 3,         # replacements of a dead actor before the run fails
    },
}


class ConfigError(ValueError):
    """A bad config: the message names the file (or override) and the key."""


def _merge(base: dict, update: dict, source: str, prefix: str = "") -> None:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{source}: unknown config key {path!r}; known: {sorted(base)}")
        if value is None and key not in ("ppo",) and prefix:   # e.g. policy.base_weights=null
            base[key] = None
        elif isinstance(base[key], dict) and key != "ppo":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {path!r} must be a mapping, got {value!r}")
            _merge(base[key], value, source, path + ".")
        elif key == "ppo":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: 'ppo' must be a mapping, got {value!r}")
            for k in value:
                if k not in base["ppo"]:
                    raise ConfigError(f"{source}: unknown config key 'ppo.{k}'; known: {sorted(base['ppo'])}")
            base["ppo"].update(value)
        else:
            base[key] = value


def parse_override(text: str) -> dict:
    """'a.b=1e-4' -> {'a': {'b': 0.0001}} (the value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    out: dict = {}
    cur = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def validate(cfg: dict, source: str) -> None:
    """Range checks; raises ConfigError naming the source and key."""
    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{source}: {key} {msg} (got {_get(cfg, key)!r})")

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    need(is_int(cfg["seed"]), "seed", "must be an integer")
    need(is_int(cfg["torch_threads"]) and cfg["torch_threads"] >= 1, "torch_threads", "must be an integer >= 1")
    need(is_int(cfg["env"]["num_envs"]) and cfg["env"]["num_envs"] >= 1, "env.num_envs", "must be an integer >= 1")
    need(isinstance(cfg["env"]["reward_scale"], (int, float)) and cfg["env"]["reward_scale"] > 0,
         "env.reward_scale", "must be > 0")
    need(cfg["env"]["reward_mode"] in ("sampled", "expected"), "env.reward_mode",
         f"must be 'sampled' or 'expected', got {cfg['env']['reward_mode']!r}")
    need(is_int(cfg["simulator"]["num_threads"]) and cfg["simulator"]["num_threads"] >= 1,
         "simulator.num_threads", "must be an integer >= 1")
    need(cfg["simulator"]["backend"] in BACKENDS, "simulator.backend", "must be one of " + ", ".join(BACKENDS))
    need(cfg["simulator"]["eval_backend"] in ("onnx", "torch_exact"), "simulator.eval_backend",
         "must be an exact engine: onnx or torch_exact")
    t = cfg["train"]
    need(is_int(t["total_timesteps"]) and t["total_timesteps"] >= 1, "train.total_timesteps", "must be >= 1")
    need(is_int(t["n_steps"]) and t["n_steps"] >= 1, "train.n_steps", "must be >= 1")
    for k in ("eval_interval", "checkpoint_interval", "log_interval"):
        need(is_int(t[k]) and t[k] >= 0, f"train.{k}", "must be an integer >= 0")
    p = cfg["policy"]
    need(isinstance(p["hidden_sizes"], list) and all(is_int(h) and h > 0 for h in p["hidden_sizes"]),
         "policy.hidden_sizes", "must be a list of positive integers")
    need(p["base"] in ("pid", "linear", "none"), "policy.base", "must be 'pid', 'linear' or 'none'")
    if p["base"] == "linear":
        from controllers.ppo import OBS_NAMES
        w = p["base_weights"]
        need(isinstance(w, dict) and len(w) > 0, "policy.base_weights",
             "must be a mapping {observation feature: weight} when policy.base is 'linear'")
        unknown = sorted(set(w) - set(OBS_NAMES))
        need(not unknown, "policy.base_weights", f"names unknown features {unknown}; known: {list(OBS_NAMES)}")
        need(all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in w.values()),
             "policy.base_weights", "must map to finite numbers")
    else:
        need(p["base_weights"] is None, "policy.base_weights", "is only used with policy.base: linear")
    d = cfg["data"]
    for k in ("data_dir", "synthetic_dir"):
        need(isinstance(d[k], str) and d[k] != "", f"data.{k}", "must be a directory path")
    need(is_int(d["synthetic_num"]) and d["synthetic_num"] >= 0, "data.synthetic_num", "must be an integer >= 0")
    need(is_int(d["synthetic_seed"]), "data.synthetic_seed", "must be an integer")
    need(isinstance(p["normalize_obs"], bool), "policy.normalize_obs", "must be true or false")
    hf = p["hidden_features"]
    hf = [hf] if isinstance(hf, str) else hf
    need(hf is None or (isinstance(hf, list) and set(hf) <= {"future", "history"}), "policy.hidden_features",
         "must be null or a list of: future, history")
    b = cfg["bc"]
    need(b["teacher"] in ("pid", "base"), "bc.teacher", "must be 'pid' or 'base' (the policy's own base controller)")
    for k in ("episodes", "epochs", "minibatch_size", "value_epochs"):
        need(is_int(b[k]) and b[k] >= (1 if k in ("episodes", "minibatch_size") else 0), f"bc.{k}", "out of range")
    need(isinstance(b["learning_rate"], (int, float)) and b["learning_rate"] > 0, "bc.learning_rate", "must be > 0")
    try:
        PPOConfig.from_dict(cfg["ppo"])
    except ValueError as e:
        raise ConfigError(f"{source}: ppo: {e}") from None
    _validate_distributed(cfg, source, need, is_int)


def _validate_distributed(cfg: dict, source: str, need, is_int) -> None:
    # Configs saved before this section existed (older checkpoints) get its defaults.
    d = cfg.setdefault("distributed", copy.deepcopy(DEFAULTS["distributed"]))
    need(d["backend"] in ("local", "ray"), "distributed.backend", "must be 'local' or 'ray'")
    need(is_int(d["num_workers"]) and d["num_workers"] >= 1, "distributed.num_workers", "must be an integer >= 1")
    need(d["envs_per_worker"] is None or (is_int(d["envs_per_worker"]) and d["envs_per_worker"] >= 1),
         "distributed.envs_per_worker", "must be null or an integer >= 1")
    need(d["address"] is None or (isinstance(d["address"], str) and d["address"].strip() != ""),
         "distributed.address", "must be null (start a local cluster), 'auto' or 'HOST:PORT'")
    need(is_int(d["max_restarts"]) and d["max_restarts"] >= 0, "distributed.max_restarts", "must be an integer >= 0")
    if d["backend"] == "ray" and d["envs_per_worker"] is None:
        need(cfg["env"]["num_envs"] % d["num_workers"] == 0, "env.num_envs",
             f"must be a multiple of distributed.num_workers ({d['num_workers']}) when "
             f"distributed.envs_per_worker is null; or set distributed.envs_per_worker")
    if d["backend"] == "ray":
        import importlib.util
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(f"{source}: distributed.backend is 'ray' but the ray package is not installed; "
                              f"install it with: pip install '.[ray]'")


def _get(cfg: dict, dotted: str) -> Any:
    cur: Any = cfg
    for p in dotted.split("."):
        cur = cur[p]
    return cur


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> dict:
    """DEFAULTS <- YAML file <- overrides, validated. Raises ConfigError."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        _merge(cfg, loaded, str(path))
    for text in overrides:
        _merge(cfg, parse_override(text), f"override {text!r}")
    validate(cfg, str(path) if path else "config")
    return cfg


def select_files(data_dir: str, spec) -> list:
    """Segment path strings str(Path(data_dir) / 'NNNNN.csv') for a spec: 'A-B' (inclusive stem range),
    or a list of names/stems. Raises ConfigError when the directory has no match."""
    d = Path(data_dir)
    if isinstance(spec, str) and "-" in spec:
        lo, hi = spec.split("-", 1)
        width = len(lo)
        names = [f"{i:0{width}d}.csv" for i in range(int(lo), int(hi) + 1)]
    elif isinstance(spec, list):
        names = [n if str(n).endswith(".csv") else f"{n}.csv" for n in spec]
    else:
        raise ConfigError(f"data files spec {spec!r}: expected 'A-B' or a list of names")
    if not d.is_dir():
        raise ConfigError(f"data.data_dir {data_dir}: no such directory; run `make setup` or set data.data_dir")
    if not any(d.glob("*.csv")):
        raise ConfigError(f"data.data_dir {data_dir}: holds no .csv segments; run `make setup` or set data.data_dir")
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
        raise ConfigError(f"{data_dir}: {len(missing)} of {len(names)} segments of {spec!r} are missing "
                          f"(first: {missing[0]}); run `make setup` or change data.*_files")
    return [str(d / n) for n in names]  # str(Path): the official harness's seed strings
