"""Gymnasium environments that replay real segments through the tinyphysics simulator.

An episode is one segment from step CONTROL_START_IDX (100) to its last row; the warm-up
(steps 20..99: logged steer, lataccel = target) is replayed exactly as the harness does,
including the controller-side error integral. Observation: `controllers.ppo.build_observation`
(OBS_DIM float32 features, see controllers/ppo.py). Action: steer command, Box[-2, 2] (1,).

Reward at step s is the negative per-step share of the challenge cost,
    r_s = -reward_scale * ( 50 * 100 * (target_s - lat_s)^2 / 400        for 100 <= s < 500
                          + 100 * ((lat_s - lat_{s-1}) / 0.1)^2 / 399    for 101 <= s < 500 )
so that an episode's return equals -reward_scale * total_cost (tinyphysics.compute_cost:
the lataccel term is a mean over the 400 cost steps, the jerk term a mean over their 399
differences). Steps from 500 to the segment's end give reward 0. With reward_mode='expected'
(training envs only) r_s is instead the mean of that step cost over the simulator's
next-lataccel distribution (expected_step_cost): the same expected return, without the
draw's own noise; the draw still drives the trajectory and infos['episode_cost'].

Randomness: in training, the simulator's uniform draws come from one np.random.Generator
seeded from the run's seed (fresh noise on every episode, so a policy cannot memorise one
noise sequence per segment); `exact=True` uses each segment's official seed instead
(scoring, and the parity tests).
"""
from __future__ import annotations

from typing import Optional, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

import tinyphysics as tp
from controllers.ppo import CONTROL_START_STEP, HISTORY, OBS_DIM, build_observation

N_COST_STEPS = tp.COST_END_IDX - tp.CONTROL_START_IDX
LAT_WEIGHT = tp.LAT_ACCEL_COST_MULTIPLIER * 100 / N_COST_STEPS      # per-step share of the lataccel term
JERK_WEIGHT = 100 / (N_COST_STEPS - 1) / tp.DEL_T ** 2              # per-step share of the jerk term


def step_cost(target: np.ndarray, lat: np.ndarray, prev_lat: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Per-step share of total_cost at simulated step(s) `step` ([N] arrays); sums to total_cost."""
    in_window = (step >= tp.CONTROL_START_IDX) & (step < tp.COST_END_IDX)
    jerk_on = (step > tp.CONTROL_START_IDX) & (step < tp.COST_END_IDX)
    return (in_window * LAT_WEIGHT * (target - lat) ** 2
            + jerk_on * JERK_WEIGHT * (lat - prev_lat) ** 2)


def expected_step_cost(probs: np.ndarray, target: np.ndarray, prev_lat: np.ndarray,
                       step: np.ndarray) -> np.ndarray:
    """Expectation of `step_cost` over the simulator's next-lataccel distribution.

    probs float [N, 1024] (the model's distribution at temperature 0.8 for step `step`),
    target, prev_lat (lataccel at step-1, m/s^2) and step: [N]. Each bin's lataccel is
    clipped to prev_lat +- MAX_ACC_DELTA as the simulator clips the draw, so this is the
    exact conditional mean of the sampled step cost given the state and the action (the
    sampling noise is integrated out: a Rao-Blackwellised reward with the same expected
    return, see docs in the README's recipe section).
    """
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    lat = np.clip(tp.TOKENIZER.bins[None, :], (prev_lat - tp.MAX_ACC_DELTA)[:, None],
                  (prev_lat + tp.MAX_ACC_DELTA)[:, None])
    costs = step_cost(target[:, None], lat, prev_lat[:, None], step[:, None])   # [N, 1024], per bin
    return np.einsum("nv,nv->n", p, costs)


REWARD_MODES = ("sampled", "expected")


def _observation_space():
    return gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)


def _action_space():
    return gym.spaces.Box(tp.STEER_RANGE[0], tp.STEER_RANGE[1], (1,), np.float32)


class LateralControlVecEnv(VectorEnv):
    """num_envs sub-environments stepped through one BatchedSimulator (one model call per step).

    segments: the pool (loaded tinyphysics.Segment objects); on every (auto)reset a
    sub-env draws a segment uniformly at random from it. exact: use official per-segment
    seeds; with `segment_order` the i-th reset of the whole pool takes segments in that
    order (used for exact evaluation). Autoreset is SAME_STEP: a finished sub-env's
    returned observation is already the next episode's first one, and the last
    observation of the finished episode is in infos['final_obs'] (mask infos['_final_obs']).
    infos['episode_cost'] / '_episode_cost' carry the finished episodes' total_cost, and
    infos['episode_len'] their number of steps.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, model: tp.TinyPhysicsModel, segments: Sequence[tp.Segment], num_envs: int,
                 reward_scale: float = 1.0, seed: Optional[int] = None, exact: bool = False,
                 reward_mode: str = "sampled"):
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        if reward_mode == "expected" and exact:
            raise ValueError("reward_mode='expected' is for training envs (exact=False): it samples "
                             "from model.probs, which the exact engines' fallback does not")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not segments:
            raise ValueError("the segment pool is empty")
        self.num_envs = num_envs
        self.segments = list(segments)
        self.reward_scale = float(reward_scale)
        self.exact = exact
        self.single_observation_space = _observation_space()
        self.single_action_space = _action_space()
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.model = model
        self._seed(seed)
        max_len = max(len(s) for s in self.segments)
        first = [self.segments[0]] * num_envs
        rngs = [np.random.RandomState(0) for _ in range(num_envs)] if exact else self.sim_rng
        self.sim = tp.BatchedSimulator(model, first, rngs=rngs, max_len=max_len)
        self.reward_mode = reward_mode
        self.sim.record_probs = reward_mode == "expected"
        self.error_integral = np.zeros(num_envs)
        self.episode_cost = np.zeros(num_envs)
        self.episode_len = np.zeros(num_envs, dtype=np.int64)
        self.episode_segment = [""] * num_envs
        self._queue: list = []

    def _seed(self, seed: Optional[int]) -> None:
        ss = np.random.SeedSequence(seed)
        seg_ss, sim_ss = ss.spawn(2)
        self.segment_rng = np.random.Generator(np.random.PCG64(seg_ss))
        self.sim_rng = np.random.Generator(np.random.PCG64(sim_ss))

    # -- episode bookkeeping -------------------------------------------------------------
    def _next_segment(self) -> tp.Segment:
        if self._queue:
            return self._queue.pop(0)
        return self.segments[int(self.segment_rng.integers(len(self.segments)))]

    def _start_episode(self, i: int) -> None:
        seg = self._next_segment()
        rng = np.random.RandomState(tp.segment_seed(seg.path)) if self.exact else None
        self.sim.set_row(i, seg, start_step=tp.CONTROL_START_IDX, rng=rng)
        # The controller-side integral after the warm-up calls 20..99 (lataccel = target),
        # accumulated in the same order as a controller does it call by call.
        tgt = seg.target_lataccel
        errors = tgt[tp.CONTEXT_LENGTH:tp.CONTROL_START_IDX] - tgt[tp.CONTEXT_LENGTH - 1:tp.CONTROL_START_IDX - 1]
        self.error_integral[i] = np.cumsum(errors)[-1] if len(errors) else 0.0
        self.episode_cost[i] = 0.0
        self.episode_len[i] = 0
        self.episode_segment[i] = seg.path

    def _observe(self, rows: np.ndarray, accumulate: bool = True) -> np.ndarray:
        """Observations of `rows` at their current step; adds this step's error to the integral."""
        sim = self.sim
        inp = sim.inputs()
        s = inp.step[rows]
        if accumulate:
            self.error_integral[rows] += inp.target[rows] - inp.current[rows]
        r = rows[:, None]
        k = np.arange(1, HISTORY + 1)
        prev_lat = sim.lataccel[r, s[:, None] - 1 - k]
        prev_target = sim.target[r, s[:, None] - k]
        act_idx = s[:, None] - k
        prev_act = np.where(act_idx >= CONTROL_START_STEP, sim.action[r, act_idx], 0.0)
        return build_observation(inp.target[rows], inp.current[rows], self.error_integral[rows],
                                 inp.roll_lataccel[rows], inp.v_ego[rows], inp.a_ego[rows],
                                 inp.future_lataccel[rows], inp.future_roll_lataccel[rows], prev_target, prev_lat,
                                 prev_act, s)

    # -- resumable state ------------------------------------------------------------------
    _SIM_ARRAYS = ("target", "roll", "v", "a", "steer", "action", "lataccel", "length", "t")

    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically (training mode, shared RNG)."""
        if self.exact:
            raise RuntimeError("state_dict is for training envs (exact=False)")
        return {"sim": {k: getattr(self.sim, k).copy() for k in self._SIM_ARRAYS},
                "row_segments": [s.path for s in self.sim.segments],
                "error_integral": self.error_integral.copy(), "episode_cost": self.episode_cost.copy(),
                "episode_len": self.episode_len.copy(), "episode_segment": list(self.episode_segment),
                "segment_rng": self.segment_rng.bit_generator.state, "sim_rng": self.sim_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        by_path = {s.path: s for s in self.segments}
        missing = [p for p in state["row_segments"] if p not in by_path]
        if missing:
            raise ValueError(f"checkpoint env rows use segments outside this pool: {missing[:3]}")
        for k in self._SIM_ARRAYS:
            setattr(self.sim, k, state["sim"][k].copy())
        self.sim.segments = [by_path[p] for p in state["row_segments"]]
        self.error_integral = state["error_integral"].copy()
        self.episode_cost = state["episode_cost"].copy()
        self.episode_len = state["episode_len"].copy()
        self.episode_segment = list(state["episode_segment"])
        self.segment_rng.bit_generator.state = state["segment_rng"]
        self.sim_rng.bit_generator.state = state["sim_rng"]
        self.sim.shared_rng = self.sim_rng

    # -- gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        """Start a new episode in every sub-env. options={'segments': [...]} fixes the
        next segments in order (then random draws resume)."""
        if seed is not None:
            self._seed(seed)
            if not self.exact:
                self.sim.shared_rng = self.sim_rng
        self._queue = list((options or {}).get("segments", []))
        for i in range(self.num_envs):
            self._start_episode(i)
        rows = np.arange(self.num_envs)
        return self._observe(rows), {}

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, -1)[:, 0]
        sim = self.sim
        s = sim.t.copy()
        sim.step(actions)
        rows = np.arange(self.num_envs)
        lat, prev = sim.lataccel[rows, s], sim.lataccel[rows, s - 1]
        cost = step_cost(sim.target[rows, s], lat, prev, s)
        self.episode_cost += cost
        self.episode_len += 1
        if self.reward_mode == "expected" and len(sim.last_rows):
            m = sim.last_rows                       # rows the model simulated this step
            cost = cost.copy()
            cost[m] = expected_step_cost(sim.last_probs, sim.target[m, s[m]], prev[m], s[m])
        rewards = -self.reward_scale * cost
        terminated = ~sim.active
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos: dict = {}
        obs = np.zeros((self.num_envs, OBS_DIM), dtype=np.float32)
        done = np.flatnonzero(terminated)
        live = np.flatnonzero(~terminated)
        if len(live):
            obs[live] = self._observe(live)
        if len(done):
            final_obs = np.zeros_like(obs)
            final_obs[done] = self._observe(done, accumulate=False)
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[done] = True
            infos = {"final_obs": final_obs, "_final_obs": mask,
                     "episode_cost": self.episode_cost.copy(), "_episode_cost": mask,
                     "episode_len": self.episode_len.copy(), "_episode_len": mask,
                     "episode_segment": np.array(self.episode_segment, dtype=object), "_episode_segment": mask}
            for i in done:
                self._start_episode(i)
            obs[done] = self._observe(done)
        return obs, rewards, terminated, truncated, infos


class LateralControlEnv(gym.Env):
    """One segment per episode (a single-row LateralControlVecEnv), the gymnasium Env API.

    reset(options={'segment': Segment}) fixes the episode's segment; otherwise one is drawn
    from the pool. step() returns (obs [OBS_DIM], reward, terminated, truncated, info); at
    the end, info['episode_cost'] is the episode's total_cost.
    """

    metadata = {"render_modes": []}

    def __init__(self, model: tp.TinyPhysicsModel, segments: Sequence[tp.Segment], reward_scale: float = 1.0,
                 exact: bool = False, seed: Optional[int] = None):
        self.vec = LateralControlVecEnv(model, segments, 1, reward_scale=reward_scale, seed=seed, exact=exact)
        self.observation_space = self.vec.single_observation_space
        self.action_space = self.vec.single_action_space

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        seg = (options or {}).get("segment")
        obs, info = self.vec.reset(seed=seed, options={"segments": [seg]} if seg is not None else None)
        return obs[0], info

    def step(self, action):
        obs, rew, term, trunc, infos = self.vec.step(np.asarray(action, dtype=np.float64).reshape(1, 1))
        info = {}
        if term[0]:
            obs = infos["final_obs"]
            info = {"episode_cost": float(infos["episode_cost"][0]), "segment": infos["episode_segment"][0]}
        return obs[0], float(rew[0]), bool(term[0]), bool(trunc[0]), info
