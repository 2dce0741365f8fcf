"""The tinyphysics simulator of the comma.ai Controls Challenge, exact and batched.

The simulator model (`models/tinyphysics.onnx`) is a small GPT that maps the last
CONTEXT_LENGTH steps of (steer action, road-roll lataccel, v_ego, a_ego) and the
tokenised past lateral accelerations to a distribution over VOCAB_SIZE lataccel bins.
This module reproduces the official harness (commaai/controls_challenge, the version
with the 5 s future plan, temperature 0.8 and COST_END_IDX 500) bit for bit:

* `TinyPhysicsSimulator` runs one segment exactly as the official `tinyphysics.py` does.
* `BatchedSimulator` steps N segments in lockstep with one onnxruntime call per step.
  Batched onnxruntime rows are bit-identical to single-row calls, and every segment keeps
  its own legacy `RandomState`, so per-segment costs equal the official ones.

Semantics (see DEVELOPERS.md and the golden parity test):
  - rows 0..19 seed the history (logged steer, lataccel = target); simulation starts at 20;
  - the controller is called on every step from 20; before CONTROL_START_IDX the logged
    steer is applied and the current lataccel is the target, although the model is still
    sampled (one uniform draw per step, which the batched path draws without the model
    call because the prediction is discarded);
  - one `random_sample()` per step from the segment's RNG, seeded with
    `int(md5(path).hexdigest(), 16) % 10**4`, and `searchsorted(cdf, u, side='right')`
    on the float64 cdf (this is what `np.random.choice(1024, p=probs)` does);
  - prediction clipped to the current lataccel +- MAX_ACC_DELTA;
  - cost over steps CONTROL_START_IDX..COST_END_IDX-1:
      lataccel_cost = mean((target - pred)^2) * 100
      jerk_cost     = mean((diff(pred) / DEL_T)^2) * 100
      total_cost    = LAT_ACCEL_COST_MULTIPLIER * lataccel_cost + jerk_cost

Command line (compatible with the official one):
  python tinyphysics.py --model_path ./models/tinyphysics.onnx --data_path ./data/00000.csv --controller pid
  python tinyphysics.py --model_path ./models/tinyphysics.onnx --data_path ./data --num_segs 100 --controller pid
"""
from __future__ import annotations

import argparse
import csv
import importlib
import os
import sys
from collections import namedtuple
from dataclasses import dataclass
from hashlib import md5
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Union

import numpy as np
import onnxruntime as ort
import pandas as pd

ACC_G = 9.81
FPS = 10
CONTROL_START_IDX = 100
COST_END_IDX = 500
CONTEXT_LENGTH = 20
VOCAB_SIZE = 1024
LATACCEL_RANGE = (-5.0, 5.0)
STEER_RANGE = (-2.0, 2.0)
MAX_ACC_DELTA = 0.5
DEL_T = 0.1
LAT_ACCEL_COST_MULTIPLIER = 50.0
TEMPERATURE = 0.8
FUTURE_PLAN_STEPS = FPS * 5  # the plan holds rows step+1 .. step+FUTURE_PLAN_STEPS-1 (49 rows)
PLAN_LEN = FUTURE_PLAN_STEPS - 1

CSV_COLUMNS = ("t", "vEgo", "aEgo", "roll", "targetLateralAcceleration", "steerCommand")

State = namedtuple("State", ["roll_lataccel", "v_ego", "a_ego"])
FuturePlan = namedtuple("FuturePlan", ["lataccel", "roll_lataccel", "v_ego", "a_ego"])


class DataError(ValueError):
    """A segment CSV is unusable; the message names the file and the problem."""


class ModelError(ValueError):
    """An ONNX file is not a usable tinyphysics model; the message names the file."""


# --------------------------------------------------------------------------------------
# Tokenizer, seeds, costs
# --------------------------------------------------------------------------------------
class LataccelTokenizer:
    """Maps lataccel (m/s^2) to the model's VOCAB_SIZE bins on linspace(-5, 5) and back."""

    def __init__(self) -> None:
        self.vocab_size = VOCAB_SIZE
        self.bins = np.linspace(LATACCEL_RANGE[0], LATACCEL_RANGE[1], VOCAB_SIZE)

    def clip(self, value):
        return np.clip(value, LATACCEL_RANGE[0], LATACCEL_RANGE[1])

    def encode(self, value):
        """Token index (int64, same shape) of the first bin >= the clipped value (digitize right=True)."""
        return np.digitize(self.clip(value), self.bins, right=True)

    def decode(self, token):
        """Bin centre (float64 m/s^2) of token(s)."""
        return self.bins[token]


TOKENIZER = LataccelTokenizer()


def segment_seed(path: Union[str, os.PathLike]) -> int:
    """The official per-segment seed: int(md5(str(path)).hexdigest(), 16) % 10**4.

    The path string is used exactly as given (e.g. 'data/00000.csv'), so the same file
    reached by another path string gets another seed, as in the official harness.
    """
    return int(md5(str(path).encode()).hexdigest(), 16) % 10**4


def compute_cost(target: np.ndarray, pred: np.ndarray) -> dict:
    """Challenge cost of one rollout from full-length histories (index = step).

    target, pred: float64 arrays of length >= COST_END_IDX, lataccel in m/s^2.
    Returns {'lataccel_cost', 'jerk_cost', 'total_cost'} as Python floats.
    """
    target = np.asarray(target)[CONTROL_START_IDX:COST_END_IDX]
    pred = np.asarray(pred)[CONTROL_START_IDX:COST_END_IDX]
    lat_accel_cost = np.mean((target - pred) ** 2) * 100
    jerk_cost = np.mean((np.diff(pred) / DEL_T) ** 2) * 100
    total_cost = lat_accel_cost * LAT_ACCEL_COST_MULTIPLIER + jerk_cost
    return {"lataccel_cost": float(lat_accel_cost), "jerk_cost": float(jerk_cost),
            "total_cost": float(total_cost)}


# --------------------------------------------------------------------------------------
# Segments
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """One logged drive, converted to simulator units. All arrays are float64, length T.

    path: the path string as given; it seeds the segment's RNG for exact scoring.
    roll_lataccel = sin(roll) * 9.81 (m/s^2); steer_command is the logged steer with its
    sign flipped (the log is left-positive, the simulator right-positive); it is NaN
    after the warm-up in the public data and only rows < CONTROL_START_IDX are used.
    """

    path: str
    roll_lataccel: np.ndarray
    v_ego: np.ndarray
    a_ego: np.ndarray
    target_lataccel: np.ndarray
    steer_command: np.ndarray

    def __len__(self) -> int:
        return len(self.target_lataccel)

    def state(self, i: int) -> State:
        return State(self.roll_lataccel[i], self.v_ego[i], self.a_ego[i])

    def future_plan(self, i: int) -> FuturePlan:
        """Rows i+1 .. i+49 (fewer near the end) as lists, like the official harness."""
        s = slice(i + 1, i + FUTURE_PLAN_STEPS)
        return FuturePlan(self.target_lataccel[s].tolist(), self.roll_lataccel[s].tolist(),
                          self.v_ego[s].tolist(), self.a_ego[s].tolist())


def load_segment(path: Union[str, os.PathLike]) -> Segment:
    """Read and validate one segment CSV (columns CSV_COLUMNS, 10 Hz, >= COST_END_IDX rows).

    Raises DataError naming the file for: a missing/empty/unparsable file, a missing
    column, non-numeric text, NaN or inf in a required column (steerCommand only where
    it is used, rows < CONTROL_START_IDX), fewer than COST_END_IDX rows, or time that
    does not increase strictly.
    """
    p = str(path)
    if not os.path.isfile(p):
        raise DataError(f"{p}: no such segment file")
    if os.path.getsize(p) == 0:
        raise DataError(f"{p}: file is empty")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: not a readable CSV ({str(e).strip()})") from None
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{p}: missing column(s) {missing}; expected {list(CSV_COLUMNS)}")
    if len(df) < COST_END_IDX:
        raise DataError(f"{p}: {len(df)} rows, shorter than the cost window ({COST_END_IDX} rows needed)")
    cols = {}
    for c in CSV_COLUMNS:
        col = df[c]
        if not pd.api.types.is_numeric_dtype(col):
            bad = pd.to_numeric(col, errors="coerce").isna() & col.notna()
            row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
            raise DataError(f"{p}: column {c!r} is not numeric (row {row + 2}: {col.iloc[row]!r})")
        values = col.to_numpy(dtype=np.float64)
        check = values[:CONTROL_START_IDX] if c == "steerCommand" else values
        finite = np.isfinite(check)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise DataError(f"{p}: column {c!r} has a non-finite value ({check[row]}) at row {row + 2}")
        cols[c] = values
    if not (np.diff(cols["t"]) > 0).all():
        row = int(np.flatnonzero(np.diff(cols["t"]) <= 0)[0]) + 1
        raise DataError(f"{p}: column 't' does not increase strictly (row {row + 2})")
    return Segment(
        path=p,
        roll_lataccel=np.sin(cols["roll"]) * ACC_G,
        v_ego=cols["vEgo"],
        a_ego=cols["aEgo"],
        target_lataccel=cols["targetLateralAcceleration"],
        steer_command=-cols["steerCommand"],
    )


def list_segments(data_path: Union[str, os.PathLike], num_segs: Optional[int] = None) -> List[str]:
    """Path strings of the first num_segs CSVs of a directory in sorted order, or [file].

    The strings are what the official CLI seeds with: str(Path(...)), so './data/00000.csv'
    and 'data/00000.csv' both give 'data/00000.csv'.
    Raises DataError when the path does not exist or the directory holds no CSV.
    """
    p = Path(data_path)
    if p.is_file():
        return [str(p)]
    if not p.is_dir():
        raise DataError(f"{data_path}: no such file or directory")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix == ".csv")
    if not files:
        raise DataError(f"{data_path}: directory holds no .csv segments")
    files = files[:num_segs] if num_segs is not None else files
    return [str(f) for f in files]


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------
# The residual stream after the last block's attention: from here on, every position is
# computed independently, and only the last one reaches the logits we use.
PRUNE_TENSOR = "/h.3/Add_output_0"


def prune_to_last_position(model_bytes: bytes) -> Optional[bytes]:
    """The simulator graph with a Slice keeping only the last position after the last
    block's attention, so the last MLP, final norm and lm head run on 1 of 20 positions
    (about 0.73x the multiply-adds). Output becomes [b, 1, 1024]. Returns None when the
    graph does not have the expected tensor (another export of the model).

    Per-row results are bit-identical to the full graph in onnxruntime on CPU (asserted by
    the golden parity test, which runs on the pruned graph)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load_from_string(model_bytes)
    g = m.graph
    producers = [i for i, n in enumerate(g.node) if PRUNE_TENSOR in n.output]
    if len(producers) != 1:
        return None
    sliced = "last_position_hidden"
    for n in g.node:
        for i, name in enumerate(n.input):
            if name == PRUNE_TENSOR:
                n.input[i] = sliced
    g.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), "prune_starts"),
                          numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "prune_ends"),
                          numpy_helper.from_array(np.array([1], np.int64), "prune_axes")])
    g.node.insert(producers[0] + 1, helper.make_node(
        "Slice", [PRUNE_TENSOR, "prune_starts", "prune_ends", "prune_axes"], [sliced], name="prune_last_position"))
    g.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    return m.SerializeToString()


class TinyPhysicsModel:
    """onnxruntime wrapper of the simulator model.

    model_path: ONNX file with inputs 'states' float32 [b, 20, 4] ([action, roll_lataccel,
    v_ego, a_ego]) and 'tokens' int64 [b, 20], output float32 logits [b, 20, 1024].
    num_threads: onnxruntime intra-op threads (the official harness uses 1; results are
    identical for any batch size at 1 thread).
    prune: run the graph pruned to the last position (prune_to_last_position); same
    logits, less work. False runs the official graph as is.
    Raises ModelError naming the file when it is missing, not ONNX, or has other I/O.
    """

    def __init__(self, model_path: Union[str, os.PathLike], debug: bool = False, num_threads: int = 1,
                 prune: bool = True) -> None:
        self.model_path = str(model_path)
        self.tokenizer = TOKENIZER
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not os.path.isfile(self.model_path):
            raise ModelError(f"{self.model_path}: no such model file")
        try:
            with open(self.model_path, "rb") as f:
                model_bytes = f.read()
            pruned = prune_to_last_position(model_bytes) if prune else None
            self.session = ort.InferenceSession(pruned or model_bytes, options, ["CPUExecutionProvider"])
        except Exception as e:  # onnx and onnxruntime raise several private exception types
            raise ModelError(f"{self.model_path}: not a loadable ONNX model ({str(e).strip()[:200]})") from None
        self.pruned = pruned is not None
        positions = 1 if self.pruned else CONTEXT_LENGTH
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = self.session.get_outputs()
        ok = (set(ins) == {"states", "tokens"} and len(outs) == 1
              and ins["states"].type == "tensor(float)" and list(ins["states"].shape[1:]) == [CONTEXT_LENGTH, 4]
              and ins["tokens"].type == "tensor(int64)" and list(ins["tokens"].shape[1:]) == [CONTEXT_LENGTH]
              and list(outs[0].shape[1:]) == [positions, VOCAB_SIZE])
        if not ok:
            got = {i.name: (i.type, i.shape) for i in self.session.get_inputs()}
            raise ModelError(
                f"{self.model_path}: not the tinyphysics simulator (expected inputs states float [b,20,4] "
                f"and tokens int64 [b,20] and output [b,20,1024]; got inputs {got})")
        if debug:
            print(f"ONNX Runtime on CPU, {num_threads} thread(s), pruned={self.pruned}: {self.model_path}")

    def logits(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Last-position logits, float32 [N, 1024], for states float32 [N,20,4], tokens int64 [N,20]."""
        return self.session.run(None, {"states": states, "tokens": tokens})[0][:, -1, :]

    @staticmethod
    def softmax(logits: np.ndarray) -> np.ndarray:
        """Probabilities at TEMPERATURE, computed in the dtype of logits as the harness does."""
        x = logits / TEMPERATURE
        e_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
        return e_x / np.sum(e_x, axis=-1, keepdims=True)

    def probs(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Next-lataccel distribution, float32 [N, 1024]."""
        return self.softmax(self.logits(states, tokens))

    def sample(self, states: np.ndarray, tokens: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Sampled next tokens int64 [N] for uniforms u [N] (see sample_tokens)."""
        return sample_tokens(self.probs(states, tokens), u)


def sample_tokens(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-cdf sampling exactly as legacy `np.random.choice(1024, p=probs)`.

    probs: [N, V] (any float dtype; cast to float64 like choice does), u: [N] uniforms in
    [0, 1). Returns int64 [N]: searchsorted(cdf / cdf[-1], u, side='right') per row.
    """
    cdf = np.cumsum(probs.astype(np.float64), axis=-1)
    cdf /= cdf[:, -1:]
    return (cdf <= u[:, None]).sum(axis=-1)


def build_model_inputs(actions: np.ndarray, roll: np.ndarray, v: np.ndarray, a: np.ndarray,
                       lataccel: np.ndarray, rows: np.ndarray, steps: np.ndarray):
    """Gather the model's context for `rows` about to simulate step `steps` ([n] each).

    History arrays are float64 [N, T] indexed by step. The states window is steps
    s-19..s (the action of step s included), the token window the lataccels s-20..s-1.
    Returns (states float32 [n,20,4], tokens int64 [n,20]).
    """
    idx = steps[:, None] + np.arange(-CONTEXT_LENGTH + 1, 1)
    r = rows[:, None]
    states = np.stack([actions[r, idx], roll[r, idx], v[r, idx], a[r, idx]], axis=-1).astype(np.float32)
    tokens = TOKENIZER.encode(lataccel[r, idx - 1]).astype(np.int64)
    return states, tokens


# --------------------------------------------------------------------------------------
# Single-segment simulator (the reference)
# --------------------------------------------------------------------------------------
class TinyPhysicsSimulator:
    """One segment, one controller, the official step order. Histories are lists by step."""

    def __init__(self, model: TinyPhysicsModel, data_path: str, controller, debug: bool = False,
                 segment: Optional[Segment] = None) -> None:
        self.data_path = str(data_path)
        self.sim_model = model
        self.data = segment if segment is not None else load_segment(self.data_path)
        self.controller = controller
        self.debug = debug
        self.reset()

    def reset(self) -> None:
        d = self.data
        self.step_idx = CONTEXT_LENGTH
        self.state_history = [d.state(i) for i in range(CONTEXT_LENGTH)]
        self.action_history = d.steer_command[:CONTEXT_LENGTH].tolist()
        self.current_lataccel_history = d.target_lataccel[:CONTEXT_LENGTH].tolist()
        self.target_lataccel_history = d.target_lataccel[:CONTEXT_LENGTH].tolist()
        self.current_lataccel = self.current_lataccel_history[-1]
        self.rng = np.random.RandomState(segment_seed(self.data_path))

    def sim_step(self, step_idx: int) -> None:
        states = np.column_stack([self.action_history[-CONTEXT_LENGTH:],
                                  np.array(self.state_history[-CONTEXT_LENGTH:])])
        tokens = TOKENIZER.encode(np.array(self.current_lataccel_history[-CONTEXT_LENGTH:]))
        probs = self.sim_model.probs(states[None].astype(np.float32), tokens[None].astype(np.int64))
        token = sample_tokens(probs, np.array([self.rng.random_sample()]))[0]
        pred = np.clip(TOKENIZER.decode(token), self.current_lataccel - MAX_ACC_DELTA,
                       self.current_lataccel + MAX_ACC_DELTA)
        if step_idx >= CONTROL_START_IDX:
            self.current_lataccel = pred
        else:
            self.current_lataccel = self.data.target_lataccel[step_idx]
        self.current_lataccel_history.append(self.current_lataccel)

    def control_step(self, step_idx: int) -> None:
        action = self.controller.update(self.target_lataccel_history[step_idx], self.current_lataccel,
                                        self.state_history[step_idx], future_plan=self.futureplan)
        if step_idx < CONTROL_START_IDX:
            action = self.data.steer_command[step_idx]
        self.action_history.append(np.clip(action, STEER_RANGE[0], STEER_RANGE[1]))

    def step(self) -> None:
        i = self.step_idx
        self.state_history.append(self.data.state(i))
        self.target_lataccel_history.append(self.data.target_lataccel[i])
        self.futureplan = self.data.future_plan(i)
        self.control_step(i)
        self.sim_step(i)
        self.step_idx += 1

    def compute_cost(self) -> dict:
        return compute_cost(np.array(self.target_lataccel_history), np.array(self.current_lataccel_history))

    def rollout(self) -> dict:
        for _ in range(CONTEXT_LENGTH, len(self.data)):
            self.step()
        return self.compute_cost()


# --------------------------------------------------------------------------------------
# Batched simulator
# --------------------------------------------------------------------------------------
ControlInputs = namedtuple("ControlInputs", [
    "step", "target", "current", "roll_lataccel", "v_ego", "a_ego",
    "future_lataccel", "future_roll_lataccel", "future_v_ego", "future_a_ego", "future_len"])
ControlInputs.__doc__ = """What a controller may know at a step, for N rows.

step int [N]; target, current, roll_lataccel, v_ego, a_ego float64 [N] (m/s^2, m/s, m/s^2);
future_* float64 [N, 49]: rows step+1..step+49, padded past the segment's end with its
last row; future_len int [N]: how many of the 49 are real rows."""


class BatchedSimulator:
    """N segments stepped together; each row has its own step index and RNG.

    segments: the segments of the rows. rngs: per-row legacy `np.random.RandomState`
    (exact scoring: seeded with `segment_seed(path)`), or one `np.random.Generator` that
    draws all rows' uniforms at once (training). Without rngs, exact seeds are used.

    History arrays (float64 [N, T_max], index = step): action, lataccel, and the segment
    columns target/roll/v/a/steer (padded past each segment's end with its last row).
    `t[i]` is the next step row i will simulate; row i is done when t[i] == length[i].
    """

    def __init__(self, model: TinyPhysicsModel, segments: Sequence[Segment], rngs=None,
                 max_len: Optional[int] = None) -> None:
        self.model = model
        n = len(segments)
        self.n = n
        self.max_len = max(max_len or 0, max(len(s) for s in segments))
        shape = (n, self.max_len + 1)
        self.target = np.zeros(shape)
        self.roll = np.zeros(shape)
        self.v = np.zeros(shape)
        self.a = np.zeros(shape)
        self.steer = np.zeros(shape)        # logged steer (sign-flipped), NaN where absent
        self.action = np.zeros(shape)
        self.lataccel = np.zeros(shape)
        self.length = np.zeros(n, dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self.segments: List[Optional[Segment]] = [None] * n
        # With record_probs, step() keeps the controlled rows' next-lataccel distributions:
        # last_rows int [m] and last_probs float32 [m, 1024] (approximate models and onnx only:
        # tokens are drawn from these probabilities with sample_tokens, not model.sample).
        self.record_probs = False
        self.last_rows = np.zeros(0, dtype=np.int64)
        self.last_probs = np.zeros((0, VOCAB_SIZE), dtype=np.float32)
        if rngs is None:
            rngs = [np.random.RandomState(segment_seed(s.path)) for s in segments]
        self.shared_rng = rngs if isinstance(rngs, np.random.Generator) else None
        self.rngs = None if self.shared_rng is not None else list(rngs)
        for i, seg in enumerate(segments):
            self.set_row(i, seg)

    def set_row(self, i: int, seg: Segment, start_step: int = CONTEXT_LENGTH,
                rng: Optional[np.random.RandomState] = None) -> None:
        """Load `seg` into row i, positioned before simulating `start_step` (20..100).

        Starting at step 100 replays the warm-up as the harness does: logged steer clipped
        to the steer range, lataccel = target. With a per-row RandomState the warm-up's
        (start_step - 20) draws are consumed, so exact scoring may start at 100 too.
        """
        if not CONTEXT_LENGTH <= start_step <= CONTROL_START_IDX:
            raise ValueError(f"start_step must be in [{CONTEXT_LENGTH}, {CONTROL_START_IDX}], got {start_step}")
        T = len(seg)
        if T > self.max_len:
            raise ValueError(f"{seg.path}: {T} rows exceed this simulator's max_len {self.max_len}")
        for arr, col in ((self.target, seg.target_lataccel), (self.roll, seg.roll_lataccel),
                         (self.v, seg.v_ego), (self.a, seg.a_ego), (self.steer, seg.steer_command)):
            arr[i, :T] = col
            arr[i, T:] = col[-1]
        self.action[i] = 0.0
        self.lataccel[i] = 0.0
        self.action[i, :CONTEXT_LENGTH] = seg.steer_command[:CONTEXT_LENGTH]
        self.action[i, CONTEXT_LENGTH:start_step] = np.clip(
            seg.steer_command[CONTEXT_LENGTH:start_step], STEER_RANGE[0], STEER_RANGE[1])
        self.lataccel[i, :start_step] = seg.target_lataccel[:start_step]
        self.length[i] = T
        self.t[i] = start_step
        self.segments[i] = seg
        if rng is not None:
            self.rngs[i] = rng
        if self.rngs is not None:
            for _ in range(start_step - CONTEXT_LENGTH):
                self.rngs[i].random_sample()

    @property
    def active(self) -> np.ndarray:
        """bool [N]: rows that still have a step to simulate."""
        return self.t < self.length

    def inputs(self) -> ControlInputs:
        """Controller inputs of every row for its next step (done rows: their last row)."""
        s = np.minimum(self.t, self.length - 1)
        r = np.arange(self.n)
        fidx = s[:, None] + np.arange(1, FUTURE_PLAN_STEPS)
        fl = np.clip(self.length - 1 - s, 0, PLAN_LEN)
        fidx = np.minimum(fidx, self.max_len)
        return ControlInputs(
            step=s, target=self.target[r, s], current=self.lataccel[r, s - 1],
            roll_lataccel=self.roll[r, s], v_ego=self.v[r, s], a_ego=self.a[r, s],
            future_lataccel=self.target[r[:, None], fidx], future_roll_lataccel=self.roll[r[:, None], fidx],
            future_v_ego=self.v[r[:, None], fidx], future_a_ego=self.a[r[:, None], fidx], future_len=fl)

    def _uniforms(self, rows: np.ndarray) -> np.ndarray:
        if self.shared_rng is not None:
            return self.shared_rng.random(len(rows))
        return np.array([self.rngs[i].random_sample() for i in rows])

    def step(self, actions: np.ndarray) -> np.ndarray:
        """Simulate one step of every active row with the controllers' actions [N].

        Rows before CONTROL_START_IDX apply the logged steer instead. Returns the rows
        that were stepped (int [n]). One model call covers all rows past the warm-up.
        """
        rows = np.flatnonzero(self.active)
        self.last_rows = rows[:0]
        if len(rows) == 0:
            return rows
        s = self.t[rows]
        warm = s < CONTROL_START_IDX
        act = np.where(warm, self.steer[rows, s], np.asarray(actions, dtype=np.float64)[rows])
        self.action[rows, s] = np.clip(act, STEER_RANGE[0], STEER_RANGE[1])
        u = self._uniforms(rows)
        new = self.target[rows, s].copy()
        ctrl = ~warm
        if ctrl.any():
            cr, cs = rows[ctrl], s[ctrl]
            states, tokens = build_model_inputs(self.action, self.roll, self.v, self.a, self.lataccel, cr, cs)
            if self.record_probs:
                probs = self.model.probs(states, tokens)
                self.last_rows, self.last_probs = cr, probs
                pred = TOKENIZER.decode(sample_tokens(probs, u[ctrl]))
            else:
                pred = TOKENIZER.decode(self.model.sample(states, tokens, u[ctrl]))
            cur = self.lataccel[cr, cs - 1]
            new[ctrl] = np.clip(pred, cur - MAX_ACC_DELTA, cur + MAX_ACC_DELTA)
        self.lataccel[rows, s] = new
        self.t[rows] += 1
        return rows

    def costs(self) -> List[dict]:
        """Per-row challenge costs (rows must have simulated past COST_END_IDX - 1)."""
        return [compute_cost(self.target[i], self.lataccel[i]) for i in range(self.n)]

    def rollout(self, controllers) -> List[dict]:
        """Run every row to its end and return per-row costs.

        controllers: a list of per-segment controllers (official interface, one per row),
        or one vectorised controller with `update_batch(ControlInputs) -> actions [N]`.
        """
        batch = hasattr(controllers, "update_batch")
        while self.active.any():
            inp = self.inputs()
            if batch:
                actions = np.asarray(controllers.update_batch(inp), dtype=np.float64)
            else:
                actions = np.zeros(self.n)
                for i in np.flatnonzero(self.active):
                    actions[i] = controllers[i].update(inp.target[i], inp.current[i],
                                                       State(inp.roll_lataccel[i], inp.v_ego[i], inp.a_ego[i]),
                                                       future_plan=self.future_plan(i))
            self.step(actions)
        return self.costs()

    def future_plan(self, i: int) -> FuturePlan:
        """Row i's plan for its next step as lists (the official FuturePlan)."""
        return self.segments[i].future_plan(int(self.t[i]))


# --------------------------------------------------------------------------------------
# Controllers and whole-dataset evaluation
# --------------------------------------------------------------------------------------
def available_controllers() -> List[str]:
    d = Path(__file__).resolve().parent / "controllers"
    return sorted(f.stem for f in d.iterdir() if f.suffix == ".py" and f.stem != "__init__")


def load_controller_module(name: str):
    """Import controllers.<name>; raises ValueError listing the available ones if absent."""
    if name not in available_controllers():
        raise ValueError(f"unknown controller {name!r}; available: {available_controllers()}")
    return importlib.import_module(f"controllers.{name}")


def make_controllers(name: str, n: int, vectorized: bool = True):
    """A vectorised controller for n rows if the module offers one, else n instances."""
    module = load_controller_module(name)
    if vectorized and hasattr(module, "BatchController"):
        return module.BatchController(n)
    return [module.Controller() for _ in range(n)]


def run_batched(model: TinyPhysicsModel, paths: Sequence[str], controller: str, batch_size: int = 1000,
                vectorized: bool = True, progress: bool = False, keep_histories: bool = False):
    """Exact per-segment costs of `controller` on `paths`, in batches of batch_size rows.

    Returns a list of cost dicts in the order of paths; with keep_histories also a list
    of (target, lataccel, action) float64 arrays per segment (full length).
    """
    results, histories = [], []
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc=f"{controller}", unit="seg")
    for chunk in chunks:
        segs = [load_segment(p) for p in chunk]
        sim = BatchedSimulator(model, segs)
        results.extend(sim.rollout(make_controllers(controller, len(segs), vectorized)))
        if keep_histories:
            for i, seg in enumerate(segs):
                T = len(seg)
                histories.append((sim.target[i, :T].copy(), sim.lataccel[i, :T].copy(), sim.action[i, :T].copy()))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return (results, histories) if keep_histories else results


def write_costs_csv(path: Union[str, os.PathLike], names: Iterable[str], costs: Sequence[dict]) -> None:
    """Per-segment costs at full precision (repr of floats), written atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "lataccel_cost", "jerk_cost", "total_cost"])
            for name, c in zip(names, costs):
                w.writerow([name, repr(c["lataccel_cost"]), repr(c["jerk_cost"]), repr(c["total_cost"])])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def summary_line(costs: Sequence[dict]) -> str:
    """The official closing line: averages formatted with '>6.4'."""
    m = {k: float(np.mean([c[k] for c in costs])) for k in ("lataccel_cost", "jerk_cost", "total_cost")}
    return (f"Average lataccel_cost: {m['lataccel_cost']:>6.4}, average jerk_cost: {m['jerk_cost']:>6.4}, "
            f"average total_cost: {m['total_cost']:>6.4}")


def plot_rollout(name: str, target: np.ndarray, lataccel: np.ndarray, action: np.ndarray,
                 out: Optional[str] = None) -> str:
    """Save a PNG of target vs simulated lataccel and the steer command; returns its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, 1, figsize=(12, 7), sharex=True, constrained_layout=True)
    ax[0].plot(target, label="target lataccel")
    ax[0].plot(lataccel, label="simulated lataccel")
    ax[1].plot(action, label="steer command", color="tab:green")
    for a in ax:
        a.axvline(CONTROL_START_IDX, color="black", ls="--", alpha=0.5)
        a.legend()
    ax[0].set_ylabel("lataccel (m/s^2)")
    ax[1].set_ylabel("steer")
    ax[1].set_xlabel("step")
    ax[0].set_title(Path(name).name)
    out = out or f"rollout_{Path(name).stem}.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run a controller through the tinyphysics simulator.")
    parser.add_argument("--model_path", type=str, required=True)
    parser.add_argument("--data_path", type=str, required=True)
    parser.add_argument("--num_segs", type=int, default=100)
    parser.add_argument("--debug", action="store_true", help="save a PNG of each rollout (single file only)")
    parser.add_argument("--controller", default="pid", choices=available_controllers())
    parser.add_argument("--costs_csv", type=str, default=None, help="write every segment's costs here")
    parser.add_argument("--batch_size", type=int, default=1000, help="segments simulated per model call")
    args = parser.parse_args(argv)
    try:
        model = TinyPhysicsModel(args.model_path, debug=args.debug)
        paths = list_segments(args.data_path, args.num_segs)
        if Path(args.data_path).is_file():
            sim = TinyPhysicsSimulator(model, paths[0], load_controller_module(args.controller).Controller())
            costs = [sim.rollout()]
            if args.debug:
                print("plot:", plot_rollout(paths[0], np.array(sim.target_lataccel_history),
                                            np.array(sim.current_lataccel_history), np.array(sim.action_history)))
        else:
            costs = run_batched(model, paths, args.controller, batch_size=args.batch_size, progress=True)
    except (DataError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.costs_csv:
        try:
            write_costs_csv(args.costs_csv, [Path(p).name for p in paths], costs)
        except OSError as e:
            print(f"error: {args.costs_csv}: cannot write costs ({e.strerror or e})", file=sys.stderr)
            return 2
    print(f"\n{summary_line(costs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
