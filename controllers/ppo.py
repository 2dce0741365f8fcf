"""PPO steering controller: an exported policy network run with onnxruntime.

Drop-in for the official challenge: copy this file to `controllers/ppo.py` and the
policy to `models/ppo_policy.onnx`; it depends on numpy and onnxruntime only.

This module is also the single definition of the policy's observation: the training
environment (ppo_training/environment/lateral_env.py) builds its observations with
`build_observation`, so what the policy saw in training is what it sees here.

Observation (float32, OBS_DIM features) at control step s, all from what a controller
may know (lataccels in m/s^2, v_ego in m/s, a_ego in m/s^2):
  target, current, error = target - current, error_integral (sum of errors of every
  call since step 20, as the PID keeps it), roll_lataccel, v_ego, a_ego,
  future target lataccel at FUTURE_OFFSETS rows ahead (padded with the plan's last row),
  future roll lataccel at FUTURE_OFFSETS,
  previous targets target[s-1] .. target[s-HISTORY],
  previous lataccels lat[s-2] .. lat[s-1-HISTORY] (current is lat[s-1]),
  previous own steer commands a[s-1] .. a[s-HISTORY] (0 before step 100, where the
  logged steer was applied instead),
  cost_window_left = clip((500 - s) / 400, 0, 1).
The controller knows s by counting calls: the harness calls it on every step from 20.
"""
import json
import os

import numpy as np
import onnxruntime as ort

from . import BaseController

OBS_VERSION = 1
FIRST_CALL_STEP = 20        # the harness calls controllers from CONTEXT_LENGTH on
CONTROL_START_STEP = 100    # before this step the logged steer is applied
COST_END_STEP = 500
PLAN_LEN = 49
FUTURE_OFFSETS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 30, 40, 49)
HISTORY = 5
STEER_LOW, STEER_HIGH = -2.0, 2.0
OBS_NAMES = (["target", "current", "error", "error_integral", "roll_lataccel", "v_ego", "a_ego"]
             + [f"future_lataccel_{k}" for k in FUTURE_OFFSETS]
             + [f"future_roll_{k}" for k in FUTURE_OFFSETS]
             + [f"prev_target_{k}" for k in range(1, HISTORY + 1)]
             + [f"prev_lataccel_{k}" for k in range(1, HISTORY + 1)]
             + [f"prev_action_{k}" for k in range(1, HISTORY + 1)]
             + ["cost_window_left"])
OBS_DIM = len(OBS_NAMES)
DEFAULT_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "ppo_policy.onnx")
_OFFSET_IDX = np.array(FUTURE_OFFSETS) - 1


def build_observation(target, current, error_integral, roll_lataccel, v_ego, a_ego,
                      future_lataccel, future_roll_lataccel, prev_target, prev_lataccel, prev_action, step):
    """Policy observations for N rows.

    target, current, error_integral, roll_lataccel, v_ego, a_ego, step: [N];
    future_lataccel, future_roll_lataccel: [N, 49] (rows s+1..s+49, edge-padded);
    prev_target: [N, HISTORY] = target[s-1], target[s-2], ...;
    prev_lataccel: [N, HISTORY] = lat[s-2], lat[s-3], ...; prev_action: [N, HISTORY] =
    a[s-1], a[s-2], ... (0 before step 100). Returns float32 [N, OBS_DIM] in OBS_NAMES order.
    """
    target = np.asarray(target, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    window = np.clip((COST_END_STEP - np.asarray(step, dtype=np.float64)) / (COST_END_STEP - CONTROL_START_STEP), 0, 1)
    cols = [target[:, None], current[:, None], (target - current)[:, None],
            np.asarray(error_integral, dtype=np.float64)[:, None],
            np.asarray(roll_lataccel, dtype=np.float64)[:, None], np.asarray(v_ego, dtype=np.float64)[:, None],
            np.asarray(a_ego, dtype=np.float64)[:, None],
            np.asarray(future_lataccel)[:, _OFFSET_IDX], np.asarray(future_roll_lataccel)[:, _OFFSET_IDX],
            np.asarray(prev_target), np.asarray(prev_lataccel), np.asarray(prev_action), window[:, None]]
    return np.concatenate(cols, axis=1).astype(np.float32)


def pad_plan(values, fill):
    """A plan list padded to PLAN_LEN with its last value (or `fill` when empty)."""
    out = np.full(PLAN_LEN, values[-1] if len(values) else fill, dtype=np.float64)
    out[:len(values)] = values[:PLAN_LEN]
    return out


class PolicyRunner:
    """The exported policy: obs float32 [N, OBS_DIM] -> steer float64 [N] in [-2, 2].

    Checks the ONNX metadata (obs_version, obs_dim, future_offsets, history) against this
    module and raises ValueError naming the file when they disagree.
    """

    def __init__(self, path=None):
        path = os.path.abspath(path or os.environ.get("PPO_POLICY_PATH", DEFAULT_POLICY))
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such policy file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, opts, ["CPUExecutionProvider"])
        except Exception as e:
            raise ValueError(f"{path}: not a loadable ONNX policy ({str(e).strip()[:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        expected = {"obs_version": str(OBS_VERSION), "obs_dim": str(OBS_DIM),
                    "future_offsets": json.dumps(list(FUTURE_OFFSETS)), "history": str(HISTORY)}
        wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            raise ValueError(f"{path}: policy metadata does not match controllers/ppo.py "
                             f"(key: (file, expected)) {wrong}")
        self.input_name = self.session.get_inputs()[0].name
        self.path = path
        self.metadata = meta

    def __call__(self, obs):
        out = self.session.run(None, {self.input_name: obs})[0]
        return np.clip(out[:, 0].astype(np.float64), STEER_LOW, STEER_HIGH)


class BatchController:
    """The PPO controller for n segments at once (tinyphysics.ControlInputs in, steer out).

    Keeps the same per-row history as n `Controller` instances and returns the same actions.
    """

    def __init__(self, n, policy=None):
        # policy: a PolicyRunner, any callable obs [n, OBS_DIM] -> steer [n] (e.g. the torch
        # policy during training), or the path of an exported ONNX policy.
        self.policy = policy if callable(policy) else PolicyRunner(policy)
        self.n = n
        self.calls = 0
        self.error_integral = np.zeros(n)
        self.lat_hist = np.zeros((n, HISTORY + 1))   # lat[s-1], lat[s-2], ...
        self.target_hist = np.zeros((n, HISTORY + 1))  # target[s], target[s-1], ...
        self.act_hist = np.zeros((n, HISTORY))       # a[s-1], a[s-2], ...

    def observe(self, target, current, roll, v, a, future_lataccel, future_roll):
        """Update the history with this call's inputs and return the observation [n, OBS_DIM]."""
        step = FIRST_CALL_STEP + self.calls
        self.calls += 1
        self.error_integral = self.error_integral + (target - current)
        self.lat_hist = np.concatenate([np.asarray(current, dtype=np.float64)[:, None], self.lat_hist[:, :-1]], axis=1)
        self.target_hist = np.concatenate([np.asarray(target, dtype=np.float64)[:, None], self.target_hist[:, :-1]],
                                          axis=1)
        return build_observation(target, current, self.error_integral, roll, v, a, future_lataccel, future_roll,
                                 self.target_hist[:, 1:], self.lat_hist[:, 1:], self.act_hist, np.full(self.n, step))

    def act(self, obs):
        step = FIRST_CALL_STEP + self.calls - 1
        action = self.policy(obs)
        applied = action if step >= CONTROL_START_STEP else np.zeros(self.n)
        self.act_hist = np.concatenate([applied[:, None], self.act_hist[:, :-1]], axis=1)
        return action

    def update_batch(self, inputs):
        obs = self.observe(inputs.target, inputs.current, inputs.roll_lataccel, inputs.v_ego, inputs.a_ego,
                           inputs.future_lataccel, inputs.future_roll_lataccel)
        return self.act(obs)


class Controller(BaseController):
    """The official per-segment interface on top of a one-row BatchController."""

    _shared_policy = {}

    def __init__(self, policy_path=None):
        key = policy_path or os.environ.get("PPO_POLICY_PATH", DEFAULT_POLICY)
        if key not in Controller._shared_policy:
            Controller._shared_policy[key] = PolicyRunner(key)
        self.batch = BatchController(1, Controller._shared_policy[key])

    def update(self, target_lataccel, current_lataccel, state, future_plan):
        obs = self.batch.observe(np.array([target_lataccel], dtype=np.float64),
                                 np.array([current_lataccel], dtype=np.float64),
                                 np.array([state.roll_lataccel]), np.array([state.v_ego]), np.array([state.a_ego]),
                                 pad_plan(future_plan.lataccel, target_lataccel)[None],
                                 pad_plan(future_plan.roll_lataccel, state.roll_lataccel)[None])
        return float(self.batch.act(obs)[0])
