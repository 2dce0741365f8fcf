"""Speed and fidelity benchmark of the simulator engines and of PPO training, in one run.

    python -m bench [--num_segs 100] [--reference_segs 20] [--train_envs 100] [--train_updates 3]
                    [--out bench/results.json]

Every engine runs the official PID controller on the same segments: the first `num_segs`
CSVs of `data/` in sorted order, addressed as 'data/NNNNN.csv' (the string seeds each
segment's official RNG).

Engines (the `engines` section of the JSON):

  reference            `tp.TinyPhysicsSimulator`, one segment at a time, the official unpruned
                       graph (`TinyPhysicsModel(prune=False)`), onnxruntime with 1 thread. Slow,
                       so it runs only the first `reference_segs` segments; its rates are per
                       second, so they compare with the others all the same.
  exact_onnx           `tp.run_batched` with the pruned onnxruntime graph, 1 thread, all
                       segments in one batch. Exact (the official costs).
  exact_onnx_2threads  the same with 2 onnxruntime intra-op threads.
  exact_torch          `run_batched` with `make_model('torch_exact', num_threads=2)`: float32
                       torch logits, onnxruntime recomputes the rows whose token could differ.
                       Exact: `identical_costs` says whether every per-segment cost equals
                       (==) exact_onnx's; `fallback_rate` is the share of rows recomputed.
  train_bf16           the training path: `make_model('torch_bf16', num_threads=2)` in a
                       `tp.BatchedSimulator` with one shared `np.random.default_rng(0)`, the
                       segments repeated to max(num_segs, train_envs) rows. Approximate: its
                       costs are not the official ones (other noise, bf16 arithmetic).
  train_bf16_compiled  the same with `torch_bf16_compiled`: the bf16 engine through
                       torch.compile (inductor, frozen weights, C++ wrapper); its one-off
                       compilation happens in the untimed warm-up at the timed batch size.
  train_fp32           the same with `torch_fp32` (2 workers), for reference.

Per engine: `wall_s` (the whole rollout, reading the CSVs included, model construction and
a small warm-up call excluded), `rollouts_per_s` (segments / wall), `steps_per_s` (simulated
steps / wall, counting steps 20..T-1 of each segment, i.e. len(segment) - 20), `model_s` and
`model_share` (time inside the model object's `sample` method / wall; the reference's
simulator calls `probs` and samples itself, so there the timer is on `probs`).

How to read the ratios: `speedup_vs_reference` = steps_per_s / reference's steps_per_s and
`speedup_vs_exact_onnx` = steps_per_s / exact_onnx's steps_per_s. Above 1 is faster. They
compare rates, so the reference's smaller segment count does not matter. A model_share near
1 means the engine is bound by the model; the rest is simulator and controller overhead
(numpy gathers, the inverse-cdf sampling outside `sample`, the controller).

Fidelity of the approximate engines (`fidelity`): the model inputs (states, tokens) of every
model call are captured during two exact rollouts on the validation segments (`val_files`,
default 00080-00099): the PID, and for off-policy coverage the PID plus N(0, noise_std) steer
noise. On those inputs, each approximate model's next-step distribution is compared with
onnxruntime's by the total-variation distance 0.5 * sum|p - q| (0: identical, 1: disjoint;
mean, 99th percentile and max over rows). `pid_cost` gives the PID's mean total_cost on the
validation segments under the exact engine and under `tp.run_batched` with the bf16 / fp32
models (official per-segment seeds, so only the arithmetic differs).

PPO throughput (`ppo`): `ppo_training.train.main` runs `train_updates` updates with
`simulator.backend=<train_backend> simulator.num_threads=2 env.num_envs=<train_envs>
train.n_steps=100 bc.enabled=false` on top of `--train_config` (default the headline recipe,
ppo_training/configs/ff_residual.yaml), in a temporary run directory; `fps_mean` is the mean of
progress.csv's `time/fps` (env steps per second of one update: rollout with the policy,
GAE, PPO epochs and normaliser update; the final validation is outside it).
`sim_env_steps_per_s` is the training simulator alone under the env's conditions:
train_envs rows started at step 100 (as the env does), shared Generator, the same
backend with 2 workers, the PID, counting only steps >= 100. `ppo_vs_sim_ratio` = fps_mean /
sim_env_steps_per_s: the share of the raw simulator speed that training keeps (1 would
mean the policy, observations and updates cost nothing).

The JSON (written atomically) also holds `machine` (CPU model, cores, RAM, load average at
the start: the figures mean little on a busy machine), `versions` and `args`.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tinyphysics as tp  # noqa: E402

__all__ = ["main", "ModelTimer", "NoisyController", "total_variation"]

PPO_N_STEPS = 100          # env steps per env per PPO update in the throughput run
ENGINES = ("reference", "exact_onnx", "exact_onnx_2threads", "exact_torch", "train_bf16", "train_bf16_compiled",
           "train_fp32")


# --------------------------------------------------------------------------------------
# Instruments
# --------------------------------------------------------------------------------------
class ModelTimer:
    """Times the calls of a model object's methods (instance-attribute wrappers).

    `with ModelTimer(model, ("sample", "probs")) as t:` wraps the named methods that the
    object has; nested calls (e.g. `sample` calling `self.probs`) count once, so `t.seconds`
    is the wall time spent inside the model and `t.calls` the number of outermost calls.
    The wrappers are removed on exit.
    """

    def __init__(self, model, methods: Sequence[str] = ("sample",)) -> None:
        self.model = model
        self.methods = [m for m in methods if hasattr(model, m)]
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0

    def _wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
                self._depth -= 1
        return timed

    def __enter__(self) -> "ModelTimer":
        for name in self.methods:
            setattr(self.model, name, self._wrap(getattr(self.model, name)))
        return self

    def __exit__(self, *exc) -> None:
        for name in self.methods:
            with contextlib.suppress(AttributeError):
                delattr(self.model, name)


class Capture:
    """Records the (states, tokens) of every `sample` call of a model while active."""

    def __init__(self, model) -> None:
        self.model = model
        self.states: List[np.ndarray] = []
        self.tokens: List[np.ndarray] = []

    def __enter__(self) -> "Capture":
        inner = self.model.sample

        def sample(states, tokens, u):
            self.states.append(np.array(states, dtype=np.float32, copy=True))
            self.tokens.append(np.array(tokens, dtype=np.int64, copy=True))
            return inner(states, tokens, u)
        self.model.sample = sample
        return self

    def __exit__(self, *exc) -> None:
        del self.model.sample

    def arrays(self):
        """(states float32 [R, 20, 4], tokens int64 [R, 20]) of all captured rows."""
        return np.concatenate(self.states), np.concatenate(self.tokens)


class NoisyController:
    """A vectorised controller plus N(0, std) steer noise on every row (off-policy inputs)."""

    def __init__(self, base, std: float, rng: np.random.Generator) -> None:
        self.base = base
        self.std = float(std)
        self.rng = rng

    def update_batch(self, inputs: tp.ControlInputs) -> np.ndarray:
        actions = np.asarray(self.base.update_batch(inputs), dtype=np.float64)
        return actions + self.rng.normal(0.0, self.std, size=actions.shape)


def total_variation(model_a, model_b, states: np.ndarray, tokens: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Per-row total-variation distance 0.5 * sum|p - q| (float64 [R]) between two models'
    next-step distributions (`probs`) on the same inputs."""
    out = []
    for i in range(0, len(states), chunk):
        p = model_a.probs(states[i:i + chunk], tokens[i:i + chunk]).astype(np.float64)
        q = model_b.probs(states[i:i + chunk], tokens[i:i + chunk]).astype(np.float64)
        out.append(0.5 * np.abs(p - q).sum(axis=-1))
    return np.concatenate(out)


def warm_up(model, n: int = 8, calls: int = 20) -> None:
    """Untimed calls of n rows, so that lazy initialisation (thread pools, kernels, the
    compiled engine's graph for this batch size and its per-thread oneDNN state, which
    takes a few calls to settle) is not timed."""
    states = np.zeros((n, tp.CONTEXT_LENGTH, 4), dtype=np.float32)
    tokens = np.full((n, tp.CONTEXT_LENGTH), tp.VOCAB_SIZE // 2, dtype=np.int64)
    for _ in range(calls):
        model.sample(states, tokens, np.full(n, 0.5))


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------
def _mean_cost(costs: Sequence[dict]) -> float:
    return float(np.mean([c["total_cost"] for c in costs]))


def _record(name: str, description: str, segments: int, rows: int, steps: int, wall: float,
            timer: ModelTimer, costs: Sequence[dict]) -> dict:
    return {
        "engine": name, "description": description, "segments": segments, "rows": rows, "steps": steps,
        "wall_s": wall, "rollouts_per_s": rows / wall, "steps_per_s": steps / wall,
        "model_s": timer.seconds, "model_calls": timer.calls, "model_share": timer.seconds / wall,
        "mean_total_cost": _mean_cost(costs),
    }


def sim_steps(paths_or_segs) -> int:
    """Simulated steps of a rollout from step 20: sum of len(segment) - 20."""
    segs = [s if isinstance(s, tp.Segment) else tp.load_segment(s) for s in paths_or_segs]
    return int(sum(len(s) - tp.CONTEXT_LENGTH for s in segs))


def measure_reference(model_path: str, paths: Sequence[str], controller: str = "pid"):
    """The single-segment simulator with the unpruned graph (1 thread), one segment at a time."""
    model = tp.TinyPhysicsModel(model_path, num_threads=1, prune=False)
    warm_up(model)
    module = tp.load_controller_module(controller)
    costs = []
    with ModelTimer(model, ("sample", "probs")) as timer:
        t0 = time.perf_counter()
        for p in paths:
            costs.append(tp.TinyPhysicsSimulator(model, p, module.Controller()).rollout())
        wall = time.perf_counter() - t0
    rec = _record("reference", "TinyPhysicsSimulator, unpruned onnx graph, 1 thread, one segment at a time",
                  len(paths), len(paths), sim_steps(paths), wall, timer, costs)
    return rec, costs


def measure_batched(name: str, description: str, model, paths: Sequence[str], controller: str = "pid"):
    """`tp.run_batched` over all paths in one batch (exact per-segment seeds). For a model
    with fallback counters (torch_exact), `fallback_rate` is the share of this run's rows
    recomputed with onnxruntime."""
    warm_up(model)
    counters = (model.rows, model.fallback_rows) if hasattr(model, "fallback_rows") else None
    with ModelTimer(model, ("sample",)) as timer:
        t0 = time.perf_counter()
        costs = tp.run_batched(model, list(paths), controller, batch_size=len(paths))
        wall = time.perf_counter() - t0
    rec = _record(name, description, len(paths), len(paths), sim_steps(paths), wall, timer, costs)
    if counters is not None:
        rec["fallback_rate"] = (model.fallback_rows - counters[1]) / max(model.rows - counters[0], 1)
    return rec, costs


def measure_training_sim(name: str, description: str, model, paths: Sequence[str], rows: int,
                         start_step: int = tp.CONTEXT_LENGTH, seed: int = 0, controller: str = "pid"):
    """The training path: one BatchedSimulator of `rows` rows (the paths repeated), one shared
    `np.random.default_rng(seed)`, the vectorised controller, every row run to its end.

    start_step=100 starts the rows after the warm-up, as the PPO environment does; steps
    are then counted from there (len(segment) - start_step)."""
    warm_up(model, rows)
    with ModelTimer(model, ("sample",)) as timer:
        t0 = time.perf_counter()
        unique = {p: tp.load_segment(p) for p in paths}
        segs = [unique[paths[i % len(paths)]] for i in range(rows)]
        sim = tp.BatchedSimulator(model, segs, rngs=np.random.default_rng(seed))
        if start_step != tp.CONTEXT_LENGTH:
            for i, seg in enumerate(segs):
                sim.set_row(i, seg, start_step=start_step)
        costs = sim.rollout(tp.make_controllers(controller, rows))
        wall = time.perf_counter() - t0
    steps = int(sum(len(s) - start_step for s in segs))
    return _record(name, description, len(paths), rows, steps, wall, timer, costs), costs


def measure_fidelity(onnx_model, approx: Dict[str, object], val_paths: Sequence[str], noise_std: float,
                     seed: int) -> dict:
    """TV distances of the approximate models to onnxruntime on captured rollout inputs, and
    the PID's mean cost on the validation segments under the exact and approximate models."""
    val_paths = list(val_paths)
    segs = [tp.load_segment(p) for p in val_paths]
    inputs, exact_costs = {}, None
    for kind in ("pid", "noisy_pid"):
        controller = tp.make_controllers("pid", len(segs))
        if kind == "noisy_pid":
            controller = NoisyController(controller, noise_std, np.random.default_rng(seed))
        with Capture(onnx_model) as cap:
            costs = tp.BatchedSimulator(onnx_model, segs).rollout(controller)
        if kind == "pid":
            exact_costs = costs
        inputs[kind] = cap.arrays()
    tv: Dict[str, dict] = {}
    for name, model in approx.items():
        tv[name] = {}
        for kind, (states, tokens) in inputs.items():
            d = total_variation(onnx_model, model, states, tokens)
            tv[name][kind] = {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": float(d.max())}
    pid_cost = {"exact": _mean_cost(exact_costs)}
    for name, model in approx.items():
        pid_cost[name] = _mean_cost(tp.run_batched(model, val_paths, "pid", batch_size=len(val_paths)))
        pid_cost[f"{name}_minus_exact"] = pid_cost[name] - pid_cost["exact"]
        pid_cost[f"{name}_relative"] = pid_cost[name] / pid_cost["exact"] - 1.0
    return {"segments": len(val_paths), "first": val_paths[0], "last": val_paths[-1], "noise_std": noise_std,
            "captured_rows": {k: int(len(v[0])) for k, v in inputs.items()}, "tv": tv, "pid_cost": pid_cost}


def measure_ppo(model_path: str, train_envs: int, train_updates: int, train_config: Optional[str],
                val_files: str, backend: str = "torch_bf16_compiled") -> dict:
    """`ppo_training.train.main` for train_updates updates (rollouts on `backend`, 2 workers)
    in a temporary run directory; returns progress.csv's per-update time figures."""
    import torch
    from ppo_training import train

    overrides = [
        f"simulator.backend={backend}", "simulator.num_threads=2", f"simulator.model_path={model_path}",
        f"env.num_envs={train_envs}", f"train.n_steps={PPO_N_STEPS}",
        f"train.total_timesteps={train_envs * PPO_N_STEPS * train_updates}",
        "train.eval_interval=0", "train.checkpoint_interval=0", "train.log_interval=1",
        "bc.enabled=false", f"data.val_files={val_files}", "run_name=bench",
    ]
    threads = torch.get_num_threads()
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as tmp:
        argv = (["--config", train_config] if train_config else []) + [f"run_dir={tmp}", *overrides, "--no_export"]
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                rc = train.main(argv)
        finally:
            torch.set_num_threads(threads)   # train.main sets the process-wide torch threads
        if rc != 0:
            raise RuntimeError(f"ppo_training.train.main exited with {rc}:\n{log.getvalue()[-3000:]}")
        with open(Path(tmp) / "bench" / "progress.csv", newline="") as f:
            rows = list(csv.DictReader(f))

    def column(key: str) -> List[float]:
        return [float(r[key]) for r in rows if r.get(key)]

    fps, rollout_s, update_s = column("time/fps"), column("time/rollout_s"), column("time/update_s")
    batch = train_envs * PPO_N_STEPS
    return {
        "config": train_config, "overrides": overrides, "num_envs": train_envs, "n_steps": PPO_N_STEPS,
        "updates": len(fps), "fps_per_update": fps, "fps_mean": float(np.mean(fps)),
        "rollout_s_mean": float(np.mean(rollout_s)), "update_s_mean": float(np.mean(update_s)),
        "rollout_fps_mean": float(np.mean([batch / s for s in rollout_s])),
    }


# --------------------------------------------------------------------------------------
# Context, report
# --------------------------------------------------------------------------------------
def machine_info() -> dict:
    """CPU model, logical / usable cores, RAM and the load average (Linux /proc; best effort)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = int(line.split()[1]) / 2**20
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": usable, "ram_gib": ram_gib,
            "loadavg_at_start": load, "platform": platform.platform(), "python": platform.python_version()}


def library_versions() -> dict:
    import onnxruntime
    import torch
    return {"numpy": np.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


def format_report(result: dict) -> str:
    """The engine table, the fidelity figures and the PPO throughput as plain text."""
    m = result["machine"]
    lines = [f"machine: {m['cpu']}, {m['usable_cores']}/{m['logical_cores']} cores, "
             f"{m['ram_gib'] or 0:.1f} GiB, load at start {m['loadavg_at_start']}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), ""]
    head = (f"{'engine':<21}{'rows':>6}{'wall s':>9}{'rollouts/s':>12}{'steps/s':>11}"
            f"{'x ref':>8}{'x onnx':>8}{'model':>7}  notes")
    lines += [head, "-" * len(head)]
    for name, e in result["engines"].items():
        notes = []
        if "identical_costs" in e:
            notes.append(f"identical={e['identical_costs']}")
        if "fallback_rate" in e:
            notes.append(f"fallback={e['fallback_rate']:.2%}")
        if "matches_exact_onnx" in e:
            notes.append(f"matches exact_onnx={e['matches_exact_onnx']}")
        notes.append(f"cost {e['mean_total_cost']:.2f}")
        lines.append(f"{name:<21}{e['rows']:>6}{e['wall_s']:>9.2f}{e['rollouts_per_s']:>12.2f}"
                     f"{e['steps_per_s']:>11.0f}{e['speedup_vs_reference']:>8.2f}{e['speedup_vs_exact_onnx']:>8.2f}"
                     f"{e['model_share']:>7.0%}  {', '.join(notes)}")
    f = result["fidelity"]
    lines += ["", f"fidelity on {f['segments']} validation segments ({Path(f['first']).stem}-"
                  f"{Path(f['last']).stem}), rows {f['captured_rows']}; TV = 0.5 sum|p - q| vs onnxruntime"]
    for name, kinds in f["tv"].items():
        lines.append(f"  {name:<20}" + "   ".join(
            f"{kind}: mean {v['mean']:.3g} p99 {v['p99']:.3g} max {v['max']:.3g}" for kind, v in kinds.items()))
    pc = f["pid_cost"]
    lines.append(f"  pid mean total_cost: exact {pc['exact']:.3f}" + "".join(
        f", {name} {pc[name]:.3f} ({pc[name + '_relative']:+.2%})" for name in f["tv"]))
    p = result["ppo"]
    lines += ["", f"ppo: {p['num_envs']} envs x {p['n_steps']} steps, {p['updates']} update(s), "
                  f"{p.get('backend', 'torch_bf16')} 2 workers: "
                  f"{p['fps_mean']:.0f} env steps/s (rollout alone {p['rollout_fps_mean']:.0f}; "
                  f"rollout {p['rollout_s_mean']:.2f} s + update {p['update_s_mean']:.2f} s per update)",
              f"     simulator alone at {p['num_envs']} rows from step 100: {p['sim_env_steps_per_s']:.0f} steps/s"
              f" -> ppo_vs_sim_ratio {p['ppo_vs_sim_ratio']:.3f}"]
    return "\n".join(lines)


def write_json_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num_segs", type=int, default=100, help="segments (first N of data_dir, sorted)")
    ap.add_argument("--reference_segs", type=int, default=20, help="of those, run by the slow reference")
    ap.add_argument("--train_envs", type=int, default=100, help="rows of the training simulator / PPO envs")
    ap.add_argument("--train_updates", type=int, default=3, help="PPO updates timed")
    ap.add_argument("--out", default="bench/results.json", help="JSON results (written atomically)")
    ap.add_argument("--model_path", default="models/tinyphysics.onnx")
    ap.add_argument("--data_dir", default="data")
    ap.add_argument("--val_files", default="00080-00099", help="fidelity segments, 'A-B' stems in data_dir")
    ap.add_argument("--ppo_val_files", default="00080-00081",
                    help="validation segments of the PPO run (validated once, after the timed updates)")
    ap.add_argument("--train_config", default="ppo_training/configs/ff_residual.yaml",
                    help="base config of the PPO run ('' for the built-in defaults)")
    ap.add_argument("--train_backend", default="auto",
                    choices=("torch_bf16", "torch_bf16_compiled", "torch_fp32", "onnx", "auto"),
                    help="simulator of the PPO run and of the simulator-alone figure it is compared with")
    ap.add_argument("--noise_std", type=float, default=0.1, help="steer noise of the off-policy capture")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shared Generator and of the noise")
    args = ap.parse_args(argv)
    for key in ("num_segs", "reference_segs", "train_envs", "train_updates"):
        if getattr(args, key) < 1:
            ap.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    if args.noise_std < 0:
        ap.error(f"--noise_std must be >= 0, got {args.noise_std}")
    return args


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every measurement, print the report, write the JSON; returns the exit status."""
    args = parse_args(argv)
    from ppo_training.config import ConfigError, select_files
    from tinyphysics_torch import make_model, native_bf16, resolve_backend

    try:
        paths = tp.list_segments(args.data_dir, args.num_segs)
        val_paths = select_files(args.data_dir, args.val_files)
        select_files(args.data_dir, args.ppo_val_files)
        tp.TinyPhysicsModel(args.model_path)   # a missing or foreign model fails here, named
    except (tp.DataError, tp.ModelError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ref_paths = paths[:args.reference_segs]
    result = {"machine": machine_info(), "versions": library_versions(),
              "args": {**vars(args), "segments_used": len(paths), "reference_segments_used": len(ref_paths)},
              "engines": {}}
    engines = result["engines"]

    _log(f"reference: {len(ref_paths)} segment(s), one at a time")
    engines["reference"], ref_costs = measure_reference(args.model_path, ref_paths)

    _log(f"exact engines: {len(paths)} segment(s) in one batch")
    onnx1 = tp.TinyPhysicsModel(args.model_path, num_threads=1)
    engines["exact_onnx"], onnx_costs = measure_batched(
        "exact_onnx", "run_batched, pruned onnx graph, 1 thread", onnx1, paths)
    engines["reference"]["matches_exact_onnx"] = ref_costs == onnx_costs[:len(ref_costs)]
    onnx2 = tp.TinyPhysicsModel(args.model_path, num_threads=2)
    engines["exact_onnx_2threads"], costs = measure_batched(
        "exact_onnx_2threads", "run_batched, pruned onnx graph, 2 threads", onnx2, paths)
    engines["exact_onnx_2threads"]["identical_costs"] = costs == onnx_costs
    exact = make_model("torch_exact", args.model_path, num_threads=2)
    engines["exact_torch"], costs = measure_batched(
        "exact_torch", "run_batched, torch_exact (fp32 torch + onnx fallback), 2 workers", exact, paths)
    engines["exact_torch"]["identical_costs"] = costs == onnx_costs
    result["identical_costs"] = engines["exact_torch"]["identical_costs"]

    train_rows = max(len(paths), args.train_envs)
    _log(f"training engines: {train_rows} rows, shared Generator")
    bf16 = make_model("torch_bf16", args.model_path, num_threads=2)
    bf16c = make_model("torch_bf16_compiled", args.model_path, num_threads=2)
    fp32 = make_model("torch_fp32", args.model_path, num_threads=2)
    trainers = {"torch_bf16": bf16, "torch_bf16_compiled": bf16c, "torch_fp32": fp32}
    args.train_backend = resolve_backend(args.train_backend)
    result["native_bf16"] = native_bf16()
    for backend, model in trainers.items():
        name = "train_" + backend[len("torch_"):]
        engines[name], _ = measure_training_sim(
            name, f"BatchedSimulator, {backend} 2 workers, shared Generator (approximate)",
            model, paths, train_rows, seed=args.seed)

    ref_rate, onnx_rate = engines["reference"]["steps_per_s"], engines["exact_onnx"]["steps_per_s"]
    for e in engines.values():
        e["speedup_vs_reference"] = e["steps_per_s"] / ref_rate
        e["speedup_vs_exact_onnx"] = e["steps_per_s"] / onnx_rate

    _log(f"fidelity: {len(val_paths)} validation segment(s), pid and pid + N(0, {args.noise_std}) noise")
    result["fidelity"] = measure_fidelity(onnx1, trainers, val_paths, args.noise_std, args.seed)

    _log(f"training simulator at env conditions: {args.train_envs} rows from step {tp.CONTROL_START_IDX}")
    sim_env, _ = measure_training_sim(f"{args.train_backend}_env", "env conditions", trainers.get(args.train_backend, onnx2),
                                      paths, args.train_envs, start_step=tp.CONTROL_START_IDX, seed=args.seed)
    _log(f"ppo: {args.train_updates} update(s) of {args.train_envs} envs x {PPO_N_STEPS} steps")
    ppo = measure_ppo(args.model_path, args.train_envs, args.train_updates, args.train_config or None,
                      args.ppo_val_files, backend=args.train_backend)
    ppo["backend"] = args.train_backend
    ppo["sim_env_steps_per_s"] = sim_env["steps_per_s"]
    ppo["sim_env_wall_s"] = sim_env["wall_s"]
    ppo["sim_env_model_share"] = sim_env["model_share"]
    ppo["ppo_vs_sim_ratio"] = ppo["fps_mean"] / sim_env["steps_per_s"]
    result["ppo"] = ppo
    result["ppo_vs_sim_ratio"] = ppo["ppo_vs_sim_ratio"]
    for model in (exact, bf16, bf16c, fp32):
        model.close()

    print()
    print(format_report(result))
    out = Path(args.out)
    write_json_atomic(result, out)
    print(f"\nresults: {out}")
    return 0
