"""The training environment: gymnasium API, reward = cost, and parity with the exact scorer."""
import numpy as np
import pytest

import tinyphysics as tp
from controllers import ppo
from ppo_training.environment.lateral_env import LateralControlEnv, LateralControlVecEnv

IX = ppo.OBS_NAMES.index


def linear_policy(seed=0):
    """A deterministic PID-like policy with a small random linear part (float64 actions)."""
    w = np.random.default_rng(seed).normal(scale=0.01, size=ppo.OBS_DIM)

    def act(obs):
        o = obs.astype(np.float64)
        return np.clip(0.2 * o[:, IX("error")] + 0.1 * o[:, IX("error_integral")] + 0.3 * o[:, IX("target")]
                       + o @ w, -2, 2)
    return act


@pytest.fixture(scope="module")
def segments(segment_paths):
    return [tp.load_segment(p) for p in segment_paths[:5]]


def run_env_episodes(env, segments, policy):
    obs, _ = env.reset(options={"segments": segments})
    n = env.num_envs
    done = np.zeros(n, bool)
    costs, returns = np.zeros(n), np.zeros(n)
    while not done.all():
        obs, rew, term, trunc, info = env.step(policy(obs)[:, None])
        returns += np.where(done, 0.0, rew)
        for i in np.flatnonzero(term & ~done):
            costs[i] = info["episode_cost"][i]
            done[i] = True
    return costs, returns


def test_exact_env_reproduces_the_scorer_and_return_is_minus_cost(model, segments):
    """Same segments, official seeds, same deterministic policy: the env's trajectories are
    the exact scorer's (controllers.ppo.BatchController in BatchedSimulator)."""
    policy = linear_policy()
    ref = tp.BatchedSimulator(model, segments).rollout(ppo.BatchController(len(segments), policy=policy))
    env = LateralControlVecEnv(model, segments, num_envs=len(segments), exact=True, reward_scale=0.01)
    costs, returns = run_env_episodes(env, segments, policy)
    ref_costs = np.array([c["total_cost"] for c in ref])
    np.testing.assert_allclose(costs, ref_costs, rtol=1e-12)
    np.testing.assert_allclose(returns, -0.01 * ref_costs, rtol=1e-12)


def test_autoreset_same_step_returns_next_episode_start(model, segments):
    env = LateralControlVecEnv(model, segments[:2], num_envs=2, seed=3)
    obs, _ = env.reset()
    assert obs.shape == (2, ppo.OBS_DIM) and obs.dtype == np.float32
    assert np.all(obs[:, IX("cost_window_left")] == 1.0)
    lengths = env.sim.length.copy()
    steps = 0
    while True:
        obs, rew, term, trunc, info = env.step(np.zeros((2, 1)))
        steps += 1
        if term.any():
            break
    i = int(np.flatnonzero(term)[0])
    assert steps == lengths.min() - tp.CONTROL_START_IDX == lengths[i] - tp.CONTROL_START_IDX
    assert info["_final_obs"][i] and info["final_obs"][i, IX("cost_window_left")] == 0.0
    assert obs[i, IX("cost_window_left")] == 1.0, "the returned obs starts the next episode"
    assert info["episode_cost"][i] > 0
    assert env.observation_space.shape == (2, ppo.OBS_DIM) and env.action_space.shape == (2, 1)


def test_training_noise_comes_from_the_run_seed(model, segments):
    def trajectory(seed):
        env = LateralControlVecEnv(model, segments[:1] * 2, num_envs=2, seed=seed)
        env.reset()
        out = []
        for _ in range(30):
            obs, *_ = env.step(np.zeros((2, 1)))
            out.append(obs[:, IX("current")])
        return np.array(out)
    a, b, c = trajectory(1), trajectory(1), trajectory(2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[:, 0], a[:, 1]), "two envs on one segment draw different noise"


def test_state_dict_round_trip_continues_identically(model, segments):
    env_a = LateralControlVecEnv(model, segments, num_envs=3, seed=5)
    env_a.reset()
    rng = np.random.default_rng(0)
    for _ in range(450):  # crosses episode ends and auto-resets
        env_a.step(rng.normal(scale=0.3, size=(3, 1)))
    state = env_a.state_dict()
    env_b = LateralControlVecEnv(model, segments, num_envs=3, seed=99)
    env_b.load_state_dict(state)
    for _ in range(200):
        act = rng.normal(scale=0.3, size=(3, 1))
        oa, ra, ta, *_ = env_a.step(act)
        ob, rb, tb, *_ = env_b.step(act)
        assert np.array_equal(oa, ob) and np.array_equal(ra, rb) and np.array_equal(ta, tb)


def test_single_env_gymnasium_api(model, segments):
    from gymnasium.utils.env_checker import check_env
    env = LateralControlEnv(model, segments, seed=0)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(options={"segment": segments[1]})
    total, info, term = 0.0, {}, False
    while not term:
        obs, r, term, trunc, info = env.step(np.array([0.0], dtype=np.float32))
        total += r
    assert info["segment"] == segments[1].path
    assert total == pytest.approx(-info["episode_cost"], rel=1e-12)


def test_vec_env_rejects_bad_arguments(model, segments):
    with pytest.raises(ValueError, match="num_envs"):
        LateralControlVecEnv(model, segments, num_envs=0)
    with pytest.raises(ValueError, match="empty"):
        LateralControlVecEnv(model, [], num_envs=2)


def test_expected_step_cost_is_the_mean_of_the_sampled_step_cost():
    """Against brute force: the clipped bins' cost weighted by the distribution, and a Monte
    Carlo mean of the sampled cost; a one-hot distribution gives that bin's cost exactly."""
    from ppo_training.environment.lateral_env import expected_step_cost, step_cost
    rng = np.random.default_rng(0)
    n = 6
    logits = rng.normal(scale=4, size=(n, tp.VOCAB_SIZE)).astype(np.float32)
    probs = tp.TinyPhysicsModel.softmax(logits)
    target, prev = rng.normal(size=n), rng.normal(scale=0.5, size=n)
    step = np.array([99, 100, 101, 300, 499, 500])
    got = expected_step_cost(probs, target, prev, step)
    bins = tp.TOKENIZER.bins
    for i in range(n):
        lat = np.clip(bins, prev[i] - 0.5, prev[i] + 0.5)
        costs = step_cost(np.full(1024, target[i]), lat, np.full(1024, prev[i]), np.full(1024, step[i]))
        p = probs[i].astype(np.float64)
        assert got[i] == pytest.approx(np.dot(p / p.sum(), costs), rel=1e-12, abs=1e-15)
        draws = tp.sample_tokens(np.repeat(probs[i:i + 1], 20000, 0), rng.random(20000))
        mc = step_cost(target[i], np.clip(tp.TOKENIZER.decode(draws), prev[i] - 0.5, prev[i] + 0.5), prev[i], step[i])
        assert got[i] == pytest.approx(mc.mean(), rel=0.05, abs=1e-12)
    assert got[0] == got[-1] == 0.0                      # outside the cost window
    one_hot = np.zeros((1, tp.VOCAB_SIZE), np.float32)
    one_hot[0, 600] = 1.0
    lat = np.clip(bins[600], prev[:1] - 0.5, prev[:1] + 0.5)
    np.testing.assert_allclose(expected_step_cost(one_hot, target[:1], prev[:1], np.array([200])),
                               step_cost(target[:1], lat, prev[:1], np.array([200])), rtol=1e-12)


def test_expected_reward_mode_keeps_trajectories_and_episode_costs(model, segments):
    """Same seed: the expected-reward env simulates the same trajectories as the sampled one
    (only the reward differs), reports the same sampled episode costs, and its return is an
    unbiased estimate of -total_cost."""
    policy = linear_policy(1)
    runs = {}
    for mode in ("sampled", "expected"):
        env = LateralControlVecEnv(model, segments, num_envs=len(segments), seed=7, reward_mode=mode)
        runs[mode] = run_env_episodes(env, segments, policy)
    (c_s, r_s), (c_e, r_e) = runs["sampled"], runs["expected"]
    np.testing.assert_array_equal(c_s, c_e)
    np.testing.assert_allclose(r_s, -c_s, rtol=1e-12)
    assert not np.allclose(r_e, r_s)
    assert np.mean(-r_e) == pytest.approx(np.mean(c_s), rel=0.1)
    with pytest.raises(ValueError, match="reward_mode"):
        LateralControlVecEnv(model, segments, num_envs=1, reward_mode="mean")
    with pytest.raises(ValueError, match="exact"):
        LateralControlVecEnv(model, segments, num_envs=1, exact=True, reward_mode="expected")
