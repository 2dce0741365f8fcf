"""Scale out on Ray: sharded exact evaluation and distributed PPO rollouts.

Ray is optional (`pip install '.[ray]'`); it is imported only when one of these is used,
so the rest of the project works without it.

Evaluation (`RayEvaluator`): the segments are cut into contiguous chunks that a pool of
Ray actors ("evaluation workers", one CPU each) runs with the exact batched simulator
(`tinyphysics.run_batched`, or `ppo_training.eval.evaluate_policy` for a policy file).
Every segment is seeded from its path string (`tinyphysics.segment_seed`) and batched rows
are independent, so the per-segment costs equal the single-process ones, in the order of
the paths, for any number of workers.

Training (`RayRolloutGroup`): `distributed.num_workers` rollout actors, each with its own
`LateralControlVecEnv` of `envs_per_worker` envs over the same training segments, its own
copy of the policy and its own sampling generator, each running `train.collect_rollout`.
The learner (train.py) sends the weights, gathers the rollout batches (worker k's envs are
columns k*E .. (k+1)*E-1 of the learner's buffer), updates, and sends the new weights.
Worker 0 is seeded exactly as the single-process trainer (env seed `seed`, action noise
`seed + 1`), so `num_workers: 1` gives the single-process run bit for bit; worker k > 0 uses
env seed SeedSequence([seed, k]) and noise seed `sample_seed(seed, k)`.

Faults: an actor that dies (process killed, node lost) is replaced by a new one.
  * evaluation: the chunk it held is run again on the replacement; results are kept per
    chunk, so no segment is counted twice or dropped.
  * training: the replacement is restored to the dead actor's last good state (its env
    state and noise generator at the end of its last finished rollout, or a fresh actor
    before the first), the steps it took since then are replayed, and the interrupted call
    is redone with the same weights and observations. The environments are deterministic,
    so the run continues exactly as if nothing had happened.
After `max_restarts` replacements of one worker slot, DistributedError is raised.

Test hook: the environment variable TINYPHYSICS_RAY_FAULT (JSON, read by the driver)
injects one fault into the first actor of one worker slot, for example
  {"role": "eval", "worker": 0, "after_calls": 30, "action": "kill"}
  {"role": "rollout", "worker": 0, "after_calls": 120, "action": "pause", "marker": "/tmp/pid"}
"kill": the actor SIGKILLs itself at its `after_calls`-th simulator model call;
"pause": it writes its pid to `marker` and waits there, to be killed from outside.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

INSTALL_HINT = "pip install '.[ray]'"
FAULT_ENV = "TINYPHYSICS_RAY_FAULT"

__all__ = ["DistributedError", "require_ray", "init_ray", "PolicyFile", "RayEvaluator", "RayRolloutGroup",
           "make_rollout_envs", "total_envs", "envs_per_worker", "worker_env_seed", "sample_seed",
           "check_checkpoint_backend", "INSTALL_HINT"]


class DistributedError(RuntimeError):
    """Ray is missing, a cluster cannot be reached or is too small, or workers keep dying."""


# --------------------------------------------------------------------------------------
# Ray: import, connect
# --------------------------------------------------------------------------------------
def require_ray():
    """The `ray` module. Raises DistributedError naming the fix when it is not installed."""
    try:
        import ray
    except ImportError as e:
        raise DistributedError(f"the ray backend needs the ray package, which is not installed ({e}); "
                               f"install it with: {INSTALL_HINT}") from None
    return ray


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Connect this process to Ray, unless it already is.

    address: None starts a local cluster on this machine (num_cpus CPUs, default all);
    'auto' joins the cluster started on this machine with `ray start --head`; 'HOST:PORT'
    (e.g. '10.0.0.1:6379') joins that cluster. Returns True when this call connected (the
    caller then owns the connection and may `ray.shutdown()` it), False when Ray was
    already initialised (e.g. by a test fixture or a notebook).
    Raises DistributedError when ray is missing or the cluster cannot be reached.
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    import logging
    kwargs: Dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    except ConnectionError as e:
        raise DistributedError(f"cannot connect to the Ray cluster at {address!r} ({e}); start one with "
                               f"`ray start --head` or set distributed.address") from None
    return True


def _check_cluster_cpus(ray, num_workers: int) -> None:
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < num_workers:
        raise DistributedError(f"the Ray cluster has {cpus:g} CPUs but num_workers={num_workers} workers need one "
                               f"each; lower num_workers or add machines (`ray start --address=...`)")


def _fault_plan(role: str) -> Optional[dict]:
    """The injected fault of TINYPHYSICS_RAY_FAULT for this role, or None."""
    text = os.environ.get(FAULT_ENV)
    if not text:
        return None
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as e:
        raise DistributedError(f"{FAULT_ENV} is not JSON ({e}): {text!r}") from None
    if plan.get("role") != role:
        return None
    if plan.get("action") not in ("kill", "pause") or int(plan.get("after_calls", 0)) < 1:
        raise DistributedError(f"{FAULT_ENV}: needs action 'kill' or 'pause' and after_calls >= 1, got {plan}")
    return plan


def _arm_fault(model, plan: Optional[dict]) -> None:
    """Wrap model.sample so the process dies (or pauses) at the plan's after_calls-th call."""
    if not plan:
        return
    inner = model.sample
    calls = [0]

    def sample(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(plan["after_calls"]):
            if plan["action"] == "pause":
                marker = Path(plan["marker"])
                tmp = marker.with_name(marker.name + ".tmp")
                tmp.write_text(str(os.getpid()))
                os.replace(tmp, marker)
                while True:
                    time.sleep(60)
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(*args, **kwargs)
    model.sample = sample


def _enter(cwd: str, torch_threads: int = 1) -> None:
    """Actor set-up: the driver's working directory (segment path strings are relative to
    it and seed the simulator) and single-threaded torch."""
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    import torch
    torch.set_num_threads(torch_threads)


def _get(ray, ref):
    """ray.get, with a worker's own exception (DataError, ValueError, ...) raised as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


def _actor_errors(ray) -> tuple:
    """The exceptions that mean 'the actor (process) is gone', not 'the task failed'."""
    from ray.exceptions import RayActorError
    errors = [RayActorError]
    for name in ("WorkerCrashedError", "NodeDiedError"):
        if hasattr(ray.exceptions, name):
            errors.append(getattr(ray.exceptions, name))
    return tuple(errors)


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------
class PolicyFile:
    """A trained policy shipped to the workers as bytes: an exported .onnx or a trainer .pt.

    Workers write the bytes to a temporary file and load it with
    ppo_training.eval.load_policy, so the file needs to exist on the driver only."""

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = str(path)
        self.suffix = Path(path).suffix
        try:
            self.data = Path(path).read_bytes()
        except OSError as e:
            raise ValueError(f"{path}: cannot read the policy file ({e.strerror or e})") from None

    def __repr__(self) -> str:
        return f"PolicyFile({self.path!r}, {len(self.data)} bytes)"


class _EvalWorker:
    """One evaluation actor: an exact simulator model and a cache of loaded policies."""

    def __init__(self, model_path: str, backend: str, num_threads: int, cwd: str, fault: Optional[dict] = None):
        _enter(cwd)
        from tinyphysics_torch import make_model
        self.model = make_model(backend, model_path, num_threads=num_threads)
        _arm_fault(self.model, fault)
        self._policies: Dict[Tuple[str, int], Any] = {}

    def pid(self) -> int:
        return os.getpid()

    def _policy(self, spec: PolicyFile):
        key = (spec.path, hash(spec.data))
        if key not in self._policies:
            from ppo_training.eval import load_policy
            fd, tmp = tempfile.mkstemp(suffix=spec.suffix)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(spec.data)
                self._policies[key] = load_policy(tmp)
            finally:
                os.unlink(tmp)
        return self._policies[key]

    def evaluate(self, paths: List[str], controller, keep_histories: bool) -> dict:
        import tinyphysics as tp
        if isinstance(controller, PolicyFile):
            from ppo_training.eval import evaluate_policy
            out = evaluate_policy(self.model, paths, self._policy(controller), batch_size=max(1, len(paths)),
                                  keep_histories=keep_histories)
        else:
            out = tp.run_batched(self.model, paths, controller, batch_size=max(1, len(paths)),
                                 keep_histories=keep_histories)
        costs, hist = out if keep_histories else (out, None)
        return {"paths": list(paths), "costs": costs, "histories": hist, "pid": os.getpid()}


_REMOTE: Dict[str, Any] = {}


def _remote(cls):
    """The Ray actor class of cls (one CPU, no automatic restarts: replacements are ours)."""
    ray = require_ray()
    if cls.__name__ not in _REMOTE:
        _REMOTE[cls.__name__] = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(cls)
    return _REMOTE[cls.__name__]


def _chunks(n: int, num_workers: int, max_chunk: int) -> List[slice]:
    """Contiguous chunks: a multiple of num_workers of them, of equal size (+-1), none above max_chunk."""
    if n == 0:
        return []
    per_worker = -(-n // (num_workers * max_chunk))
    count = min(n, num_workers * per_worker)
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _close_actors(owner) -> None:
    """Kill owner.workers (Ray actors) and shut Ray down if owner started it (owner._owns_ray)."""
    for w in getattr(owner, "workers", []):
        try:
            owner.ray.kill(w, no_restart=True)
        except Exception:
            pass
    owner.workers = []
    if getattr(owner, "_owns_ray", False) and owner.ray.is_initialized():
        owner.ray.shutdown()
        owner._owns_ray = False


class RayEvaluator:
    """A pool of evaluation actors that returns exactly the single-process per-segment costs.

    num_workers: actors, one CPU each. model_path: the simulator ONNX file (must exist at
    this path on every node). backend: an exact engine, 'onnx' or 'torch_exact'.
    num_threads: simulator threads per actor (1: one core each). address: see init_ray.
    max_restarts: replacements of one worker slot before DistributedError.
    Raises DistributedError when ray is missing or the cluster has fewer CPUs than workers.

    Use as a context manager (or call close()) so the actors are released:

        with RayEvaluator(2) as ev:
            costs = ev.run(paths, "pid")
    """

    def __init__(self, num_workers: int = 2, model_path: Union[str, os.PathLike] = "models/tinyphysics.onnx",
                 backend: str = "onnx", num_threads: int = 1, address: Optional[str] = None,
                 max_restarts: int = 3) -> None:
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if backend not in ("onnx", "torch_exact"):
            raise ValueError(f"evaluation needs an exact engine ('onnx' or 'torch_exact'), got {backend!r}")
        self.ray = require_ray()
        self._owns_ray = init_ray(address)
        try:
            _check_cluster_cpus(self.ray, int(num_workers))
        except DistributedError:
            self.close()
            raise
        self.num_workers = int(num_workers)
        self.max_restarts = int(max_restarts)
        self._args = (str(model_path), backend, int(num_threads), os.getcwd())
        self.restarts = [0] * self.num_workers
        self.chunk_runs: List[int] = []     # per chunk of the last run(): how many times it was started
        fault = _fault_plan("eval")
        self.workers = [self._spawn(i, fault if fault and int(fault.get("worker", 0)) == i else None)
                        for i in range(self.num_workers)]
        self._errors = _actor_errors(self.ray)

    def _spawn(self, slot: int, fault: Optional[dict] = None):
        return _remote(_EvalWorker).remote(*self._args, fault)

    def pids(self) -> List[int]:
        """Process ids of the current actors, in worker-slot order."""
        return self.ray.get([w.pid.remote() for w in self.workers])

    def _replace(self, slot: int, error: BaseException) -> None:
        self.restarts[slot] += 1
        if self.restarts[slot] > self.max_restarts:
            raise DistributedError(f"evaluation worker {slot} died {self.restarts[slot]} times "
                                   f"(max_restarts={self.max_restarts}); last error: {error}") from None
        print(f"[ray] evaluation worker {slot} died ({type(error).__name__}); replacing it and re-running "
              f"its chunk", file=sys.stderr, flush=True)
        self.ray.kill(self.workers[slot], no_restart=True)
        self.workers[slot] = self._spawn(slot)

    def run(self, paths: Sequence[str], controller: Union[str, PolicyFile], keep_histories: bool = False,
            max_chunk: int = 1000):
        """Exact per-segment costs of `controller` on `paths`, in the order of paths.

        paths: segment path strings as the single-process run gets them (they seed the RNG).
        controller: a controller module name ('pid', 'ppo', ...) or a PolicyFile.
        keep_histories: also return (target, lataccel, action) float64 [T] per segment.
        max_chunk: most segments per actor call (one batched simulator).
        Returns what tinyphysics.run_batched returns: a list of cost dicts (and the list of
        histories). Raises the worker's exception (e.g. DataError) when a chunk fails, and
        DistributedError when a worker slot dies more than max_restarts times.
        """
        ray = self.ray
        paths = list(paths)
        chunks = _chunks(len(paths), self.num_workers, max_chunk)
        results: List[Optional[dict]] = [None] * len(chunks)
        self.chunk_runs = [0] * len(chunks)
        pending = deque(range(len(chunks)))
        idle = deque(range(self.num_workers))
        running: Dict[Any, Tuple[int, int]] = {}
        ctrl = ray.put(controller)
        try:
            while pending or running:
                while pending and idle:
                    slot, ci = idle.popleft(), pending.popleft()
                    ref = self.workers[slot].evaluate.remote(paths[chunks[ci]], ctrl, keep_histories)
                    running[ref] = (slot, ci)
                    self.chunk_runs[ci] += 1
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    slot, ci = running.pop(ref)
                    try:
                        out = _get(ray, ref)
                    except self._errors as e:
                        self._replace(slot, e)
                        pending.appendleft(ci)
                        idle.append(slot)
                        continue
                    if results[ci] is not None or out["paths"] != paths[chunks[ci]]:
                        raise DistributedError(f"chunk {ci} came back twice or with other segments")
                    results[ci] = out
                    idle.append(slot)
        except BaseException:
            for ref in running:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
            raise
        costs = [c for r in results for c in r["costs"]]
        if keep_histories:
            return costs, [h for r in results for h in r["histories"]]
        return costs

    def close(self) -> None:
        """Kill the actors; shut Ray down if this evaluator started it."""
        _close_actors(self)

    def __enter__(self) -> "RayEvaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
def envs_per_worker(cfg: dict) -> int:
    """Envs of one rollout worker: distributed.envs_per_worker, or env.num_envs / num_workers when null."""
    d = cfg["distributed"]
    if d["envs_per_worker"] is not None:
        return int(d["envs_per_worker"])
    return cfg["env"]["num_envs"] // d["num_workers"]


def total_envs(cfg: dict) -> int:
    """Envs stepped per rollout: env.num_envs (local) or num_workers * envs_per_worker (ray)."""
    if cfg["distributed"]["backend"] != "ray":
        return cfg["env"]["num_envs"]
    return cfg["distributed"]["num_workers"] * envs_per_worker(cfg)


def worker_env_seed(seed: int, k: int):
    """Env seed of rollout worker k: the run's seed for worker 0, SeedSequence entropy [seed, k] after."""
    return seed if k == 0 else [int(seed), int(k)]


def sample_seed(seed: int, k: int) -> int:
    """Action-noise seed of rollout worker k: seed + 1 for worker 0 (the single-process trainer's)."""
    if k == 0:
        return int(seed) + 1
    return int(np.random.SeedSequence([int(seed), int(k), 1]).generate_state(1, np.uint64)[0] >> 1)


def make_rollout_envs(cfg: dict, model, segments: Sequence) -> Any:
    """The trainer's rollout environments for cfg['distributed']['backend'].

    local: a LateralControlVecEnv of env.num_envs envs on `model` (seeded with cfg['seed']).
    ray: a RayRolloutGroup (actors build their own simulator from cfg['simulator']).
    """
    if cfg["distributed"]["backend"] == "ray":
        return RayRolloutGroup(cfg, segments)
    from ppo_training.environment.lateral_env import LateralControlVecEnv
    return LateralControlVecEnv(model, segments, cfg["env"]["num_envs"], reward_scale=cfg["env"]["reward_scale"],
                                seed=cfg["seed"], reward_mode=cfg["env"]["reward_mode"])


def check_checkpoint_backend(cfg: dict, ckpt: dict) -> None:
    """Refuse (ConfigError) to resume a checkpoint whose env state another backend or
    another number of rollout workers wrote; the message names the setting to use."""
    from ppo_training.config import ConfigError
    state = ckpt.get("env") or {}
    saved = state.get("distributed")
    if cfg["distributed"]["backend"] == "ray":
        if saved is None:
            raise ConfigError("the checkpoint was written by distributed.backend=local; resume it with "
                              "distributed.backend=local")
        want = (cfg["distributed"]["num_workers"], envs_per_worker(cfg))
        have = (saved["num_workers"], saved["envs_per_worker"])
        if want != have:
            raise ConfigError(f"the checkpoint has {have[0]} rollout workers of {have[1]} envs; resume with "
                              f"distributed.num_workers={have[0]} distributed.envs_per_worker={have[1]}")
    elif saved is not None:
        raise ConfigError("the checkpoint was written by distributed.backend=ray; resume it with "
                          "distributed.backend=ray")


class _RolloutWorker:
    """One rollout actor: its own simulator, LateralControlVecEnv, policy copy and noise generator."""

    def __init__(self, cfg: dict, index: int, num_envs: int, segments, cwd: str, fault: Optional[dict] = None):
        _enter(cwd, cfg["torch_threads"])
        import torch

        from ppo_training.environment.lateral_env import LateralControlVecEnv
        from ppo_training.utils.rollout_buffer import RolloutBuffer
        from controllers.ppo import OBS_DIM
        from tinyphysics_torch import make_model
        sim = cfg["simulator"]
        self.model = make_model(sim["backend"], sim["model_path"], num_threads=sim["num_threads"])
        _arm_fault(self.model, fault)
        self.envs = LateralControlVecEnv(self.model, segments, num_envs, reward_scale=cfg["env"]["reward_scale"],
                                         seed=worker_env_seed(cfg["seed"], index),
                                         reward_mode=cfg["env"]["reward_mode"])
        self.buffer = RolloutBuffer(cfg["train"]["n_steps"], num_envs, OBS_DIM, 1)
        self.sample_gen = torch.Generator().manual_seed(sample_seed(cfg["seed"], index))
        self.policy = None
        self._policy_config = None

    def pid(self) -> int:
        return os.getpid()

    def apply(self, ops: list) -> Any:
        """Run env operations ('reset',) / ('step', actions [n, 1]); returns the last one's result."""
        out = None
        for op in ops:
            if op[0] == "reset":
                out = self.envs.reset()
            else:
                out = self.envs.step(op[1])
        return out

    def get_state(self) -> dict:
        return {"env": self.envs.state_dict(), "sample_gen": self.sample_gen.get_state()}

    def set_state(self, state: dict) -> None:
        self.envs.load_state_dict(state["env"])
        self.sample_gen.set_state(state["sample_gen"])

    def rollout(self, policy: dict, obs: np.ndarray, episode_start: np.ndarray) -> dict:
        """train.collect_rollout with this actor's envs, buffer and generator; returns the batch,
        what GAE needs, finished episodes, and the state at the end (the next restore point)."""
        import torch

        from ppo_training.policy.actor_critic import ActorCritic
        from ppo_training.train import collect_rollout
        if self.policy is None or policy["config"] != self._policy_config:
            self.policy = ActorCritic(**policy["config"])
            self._policy_config = policy["config"]
        self.policy.load_state_dict(policy["state"])
        self.policy.eval()
        obs, episode_start, last_values, costs, lens = collect_rollout(
            self.policy, self.envs, self.buffer, np.array(obs, copy=True), np.array(episode_start, copy=True),
            self.sample_gen)
        b = self.buffer
        return {"observations": b.observations, "actions": b.actions, "rewards": b.rewards,
                "episode_starts": b.episode_starts, "values": b.values, "log_probs": b.log_probs,
                "obs": obs, "episode_start": episode_start, "last_values": last_values.numpy(),
                "done_costs": costs, "done_lens": lens, "state": self.get_state()}


_BUFFER_FIELDS = ("observations", "actions", "rewards", "episode_starts", "values", "log_probs")


class RayRolloutGroup:
    """The learner's side of distributed rollouts; stands in for LateralControlVecEnv in train.py.

    cfg: the run's config (sections simulator, env, train, distributed, seed, torch_threads).
    segments: the training segments (tinyphysics.Segment), sent once to every actor.
    num_envs = num_workers * envs_per_worker; env i of the group is env i % E of worker i // E.

    reset() / step(actions [num_envs, 1]) run on the actors (used by the behaviour-cloning
    warm start); collect() is the distributed collect_rollout; state_dict() /
    load_state_dict() hold every actor's env state and noise generator for checkpoints.
    Raises DistributedError when ray is missing, the cluster has too few CPUs, or a
    worker slot dies more than distributed.max_restarts times.
    """

    def __init__(self, cfg: dict, segments: Sequence) -> None:
        d = cfg["distributed"]
        self.ray = require_ray()
        self._owns_ray = init_ray(d["address"])
        self.num_workers = int(d["num_workers"])
        try:
            _check_cluster_cpus(self.ray, self.num_workers)
        except DistributedError:
            self.close()
            raise
        self.envs_per_worker = envs_per_worker(cfg)
        self.num_envs = self.num_workers * self.envs_per_worker
        self.max_restarts = int(d["max_restarts"])
        self.segments = list(segments)
        self._cfg = cfg
        self._segments_ref = self.ray.put(self.segments)
        self._errors = _actor_errors(self.ray)
        self.restarts = [0] * self.num_workers
        # Restore point per worker: state (None: a fresh actor) and the operations since.
        self._snapshots: List[Optional[dict]] = [None] * self.num_workers
        self._logs: List[list] = [[] for _ in range(self.num_workers)]
        fault = _fault_plan("rollout")
        self.workers = [self._spawn(k, fault if fault and int(fault.get("worker", 0)) == k else None)
                        for k in range(self.num_workers)]

    # -- actors and faults ------------------------------------------------------------
    def _spawn(self, k: int, fault: Optional[dict] = None):
        return _remote(_RolloutWorker).remote(self._cfg, k, self.envs_per_worker, self._segments_ref,
                                              os.getcwd(), fault)

    def _cols(self, k: int) -> slice:
        return slice(k * self.envs_per_worker, (k + 1) * self.envs_per_worker)

    def pids(self) -> List[int]:
        """Process ids of the current actors, in worker order."""
        return self.ray.get([w.pid.remote() for w in self.workers])

    def _replace(self, k: int, error: BaseException) -> None:
        """A new actor for worker k, brought to the dead one's state: last snapshot + replayed ops."""
        self.restarts[k] += 1
        if self.restarts[k] > self.max_restarts:
            raise DistributedError(f"rollout worker {k} died {self.restarts[k]} times "
                                   f"(distributed.max_restarts={self.max_restarts}); last error: {error}") from None
        print(f"[ray] rollout worker {k} died ({type(error).__name__}); replacing it from its last good state",
              file=sys.stderr, flush=True)
        self.ray.kill(self.workers[k], no_restart=True)
        w = self._spawn(k)
        if self._snapshots[k] is not None:
            w.set_state.remote(self._snapshots[k])
        if self._logs[k]:
            w.apply.remote(self._logs[k])
        self.workers[k] = w

    def _call(self, method: str, args_of) -> list:
        """Call `method` on every worker with args_of(k); replace dead workers and retry."""
        results: List[Any] = [None] * self.num_workers
        todo = list(range(self.num_workers))
        while todo:
            refs = {getattr(self.workers[k], method).remote(*args_of(k)): k for k in todo}
            todo = []
            for ref, k in refs.items():
                try:
                    results[k] = _get(self.ray, ref)
                except self._errors as e:
                    self._replace(k, e)
                    todo.append(k)
        return results

    # -- VecEnv interface (behaviour cloning, reset) ------------------------------------
    def _ops(self, op_of) -> list:
        ops = [op_of(k) for k in range(self.num_workers)]
        out = self._call("apply", lambda k: ([ops[k]],))
        for k in range(self.num_workers):
            self._logs[k].append(ops[k])
        return out

    def reset(self, *, seed=None, options=None):
        """Reset every actor's envs; returns (obs [num_envs, OBS_DIM], {})."""
        if seed is not None or options:
            raise ValueError("RayRolloutGroup.reset takes no seed or options (each actor is seeded from the config)")
        out = self._ops(lambda k: ("reset",))
        return np.concatenate([o[0] for o in out]), {}

    def step(self, actions):
        """Step every actor's envs with its columns of actions [num_envs, 1]; the results of
        LateralControlVecEnv.step concatenated over workers (infos merged, masks per env)."""
        actions = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, -1)
        out = self._ops(lambda k: ("step", actions[self._cols(k)].copy()))
        obs = np.concatenate([o[0] for o in out])
        rew, term, trunc = (np.concatenate([o[i] for o in out]) for i in (1, 2, 3))
        infos: dict = {}
        keys = [key for o in out for key in o[4]]
        for key in dict.fromkeys(keys):
            template = next(o[4][key] for o in out if key in o[4])
            parts = [o[4][key] if key in o[4] else np.zeros((self.envs_per_worker,) + template.shape[1:],
                                                              dtype=template.dtype) for o in out]
            infos[key] = np.concatenate(parts)
        return obs, rew, term, trunc, infos

    # -- rollouts ------------------------------------------------------------------------
    def collect(self, policy, buffer, obs: np.ndarray, episode_start: np.ndarray):
        """Distributed train.collect_rollout: same arguments and returns, minus the generator
        (each actor has its own).

        policy: the learner's ActorCritic (its config and weights are sent to every actor).
        buffer: RolloutBuffer [n_steps, num_envs], filled with the workers' batches (worker k
        in columns k*E .. (k+1)*E-1). obs: float32 [num_envs, OBS_DIM]; episode_start:
        [num_envs], 1.0 where obs starts an episode.
        Returns (obs [num_envs, OBS_DIM], episode_start [num_envs], last_values torch float32
        [num_envs], finished episodes' total_costs, their lengths in steps), as collect_rollout.
        Raises DistributedError when a worker slot dies more than max_restarts times.
        """
        import torch
        blob = self.ray.put({"config": policy.config, "state": {k: v.detach().clone()
                                                                  for k, v in policy.state_dict().items()}})
        obs = np.asarray(obs)
        episode_start = np.asarray(episode_start)
        out = self._call("rollout", lambda k: (blob, obs[self._cols(k)], episode_start[self._cols(k)]))
        buffer.reset()
        for field in _BUFFER_FIELDS:
            dst = getattr(buffer, field)
            for k, r in enumerate(out):
                dst[:, self._cols(k)] = r[field]
        buffer.pos, buffer.full, buffer.returns_computed = buffer.n_steps, True, False
        for k, r in enumerate(out):
            self._snapshots[k], self._logs[k] = r["state"], []
        costs = [c for r in out for c in r["done_costs"]]
        lens = [n for r in out for n in r["done_lens"]]
        return (np.concatenate([r["obs"] for r in out]), np.concatenate([r["episode_start"] for r in out]),
                torch.from_numpy(np.concatenate([r["last_values"] for r in out])), costs, lens)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Every actor's env state and noise generator (fetched if they moved since the last rollout)."""
        stale = [k for k in range(self.num_workers) if self._snapshots[k] is None or self._logs[k]]
        if stale:
            states = self._call("get_state", lambda k: ())
            for k in stale:
                self._snapshots[k], self._logs[k] = states[k], []
        return {"distributed": {"num_workers": self.num_workers, "envs_per_worker": self.envs_per_worker},
                "workers": list(self._snapshots)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the actors from state_dict()'s output (same number of workers and envs)."""
        saved = state.get("distributed")
        if saved != {"num_workers": self.num_workers, "envs_per_worker": self.envs_per_worker}:
            raise ValueError(f"checkpoint env state is for {saved}, this group has {self.num_workers} workers "
                             f"of {self.envs_per_worker} envs")
        self._call("set_state", lambda k: (state["workers"][k],))
        self._snapshots = list(state["workers"])
        self._logs = [[] for _ in range(self.num_workers)]

    def close(self) -> None:
        """Kill the actors; shut Ray down if this group started it."""
        _close_actors(self)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
