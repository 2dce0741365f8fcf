"""Tests for the PPO building blocks: buffer/GAE, normaliser, policy, agent, logger."""

from __future__ import annotations

import glob
import csv
import io
import math
import os
import time

import numpy as np
import pytest
import torch

from ppo_training.policy.actor_critic import ActorCritic, RunningMeanStd
from ppo_training.policy.ppo_agent import PPOAgent, PPOConfig, explained_variance
from ppo_training.utils.logger import Logger
from ppo_training.utils.rollout_buffer import RolloutBuffer
from ppo_training.policy.ppo_agent import UPDATE_STAT_KEYS

STAT_KEYS = set(UPDATE_STAT_KEYS)
assert {"policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl", "explained_variance"} <= STAT_KEYS


@pytest.fixture(autouse=True)
def _single_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# --------------------------------------------------------------------------- buffer


def _reference_gae(rewards, values, starts, last_values, dones, gamma, lam):
    """Direct sum A_t = sum_l (gamma*lam)^l delta_{t+l}, stopping at episode ends."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for e in range(N):
        for t in range(T):
            total, coef = 0.0, 1.0
            for k in range(t, T):
                if k + 1 < T:
                    nonterminal = 1.0 - starts[k + 1, e]
                    next_v = values[k + 1, e]
                else:
                    nonterminal = 1.0 - dones[e]
                    next_v = last_values[e]
                delta = rewards[k, e] + gamma * next_v * nonterminal - values[k, e]
                total += coef * delta
                if nonterminal == 0.0:
                    break
                coef *= gamma * lam
            adv[t, e] = total
    return adv


def _fill_random(buf: RolloutBuffer, rng: np.random.Generator, p_start: float = 0.3):
    for t in range(buf.n_steps):
        starts = (rng.random(buf.n_envs) < p_start).astype(np.float32)
        if t == 0:
            starts[0] = 1.0
        buf.add(
            obs=rng.normal(size=(buf.n_envs, buf.obs_dim)).astype(np.float32),
            action=torch.as_tensor(rng.normal(size=(buf.n_envs, buf.act_dim)), dtype=torch.float32),
            reward=rng.normal(size=buf.n_envs),
            episode_start=starts.astype(bool),
            value=torch.as_tensor(rng.normal(size=buf.n_envs), dtype=torch.float32),
            log_prob=rng.normal(size=buf.n_envs),
        )


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 1.0), (0.5, 0.0)])
def test_gae_matches_reference(gamma, lam):
    rng = np.random.default_rng(123)
    buf = RolloutBuffer(n_steps=17, n_envs=4, obs_dim=3, act_dim=1)
    _fill_random(buf, rng)
    assert buf.full
    assert buf.episode_starts[1:].sum() > 0  # episode boundaries mid-buffer are exercised
    last_values = rng.normal(size=4).astype(np.float32)
    dones = np.array([0.0, 1.0, 0.0, 1.0], dtype=np.float32)
    buf.compute_returns_and_advantage(torch.as_tensor(last_values), dones, gamma=gamma, gae_lambda=lam)

    ref = _reference_gae(
        buf.rewards.astype(np.float64), buf.values.astype(np.float64),
        buf.episode_starts.astype(np.float64), last_values.astype(np.float64),
        dones.astype(np.float64), gamma, lam,
    )
    np.testing.assert_allclose(buf.advantages, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(buf.returns, ref + buf.values, rtol=1e-5, atol=1e-5)


def test_buffer_add_errors():
    buf = RolloutBuffer(n_steps=1, n_envs=2, obs_dim=3, act_dim=1)
    with pytest.raises(ValueError, match="obs"):
        buf.add(np.zeros((2, 4)), np.zeros((2, 1)), np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2))
    buf.add(np.zeros((2, 3)), np.zeros(2), np.zeros(2), np.ones(2), np.zeros((2, 1)), np.zeros(2))
    with pytest.raises(RuntimeError):
        buf.add(np.zeros((2, 3)), np.zeros(2), np.zeros(2), np.ones(2), np.zeros(2), np.zeros(2))
    with pytest.raises(RuntimeError):
        next(buf.get(1))  # returns not computed yet


def test_get_yields_each_index_once_per_epoch():
    n_steps, n_envs = 5, 3
    buf = RolloutBuffer(n_steps=n_steps, n_envs=n_envs, obs_dim=2, act_dim=1)
    for t in range(n_steps):
        ids = np.arange(n_envs) + t * n_envs
        buf.add(
            obs=np.stack([ids, -ids], axis=1),
            action=ids[:, None],
            reward=np.zeros(n_envs),
            episode_start=np.zeros(n_envs),
            value=ids,
            log_prob=ids * 2,
        )
    buf.compute_returns_and_advantage(np.zeros(n_envs), np.ones(n_envs), gamma=0.99, gae_lambda=0.95)
    gen = torch.Generator().manual_seed(0)
    orders = []
    for _epoch in range(3):
        seen, sizes = [], []
        for b in buf.get(batch_size=4, generator=gen):
            sizes.append(len(b.observations))
            ids = b.observations[:, 0]
            assert torch.equal(b.observations[:, 1], -ids)
            assert torch.equal(b.actions[:, 0], ids)
            assert torch.equal(b.old_values, ids)
            assert torch.equal(b.old_log_prob, ids * 2)
            assert b.advantages.shape == b.returns.shape == ids.shape
            torch.testing.assert_close(b.returns, b.advantages + b.old_values)
            seen.extend(int(i) for i in ids)
        assert sizes == [4, 4, 4, 3]
        assert sorted(seen) == list(range(n_steps * n_envs))
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled each epoch
    # Same seed -> same permutation.
    again = [int(i) for b in buf.get(4, torch.Generator().manual_seed(0)) for i in b.observations[:, 0]]
    assert again == orders[0]
    full = list(buf.get(None))
    assert len(full) == 1 and len(full[0].observations) == n_steps * n_envs


# --------------------------------------------------------------------------- normaliser / policy


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    rms = RunningMeanStd(4)
    chunks = []
    for size in (1, 7, 100, 3, 250, 1):
        x = rng.normal(loc=[5.0, -3.0, 0.0, 100.0], scale=[3.0, 0.1, 1.0, 20.0], size=(size, 4))
        chunks.append(x)
        rms.update(torch.as_tensor(x, dtype=torch.float32))
    data = np.concatenate(chunks).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0), rtol=1e-5, atol=1e-5)
    assert float(rms.count) == len(data)
    assert {"mean", "var", "count"} <= set(rms.state_dict())

    x = torch.as_tensor(data[:5], dtype=torch.float32)
    expected = torch.clamp((x - rms.mean) / torch.sqrt(rms.var + 1e-8), -10, 10)
    torch.testing.assert_close(rms(x), expected)
    far = torch.full((1, 4), 1e6)
    assert torch.all(rms(far) == 10.0)


def test_act_deterministic_bounds_and_clamped_mean():
    torch.manual_seed(0)
    policy = ActorCritic(obs_dim=5, act_dim=2, hidden_sizes=(16, 16), action_low=-1.5, action_high=2.0)
    with torch.no_grad():
        policy.actor_mean[-1].weight.mul_(500.0)  # push the mean far outside the bounds
    obs = torch.randn(256, 5) * 3
    act = policy.act_deterministic(obs)
    assert act.shape == (256, 2)
    assert torch.all(act >= -1.5) and torch.all(act <= 2.0)
    raw_mean = policy.action_mean(obs)
    assert (raw_mean < -1.5).any() and (raw_mean > 2.0).any()
    assert torch.equal(act, torch.clamp(raw_mean, -1.5, 2.0))
    assert torch.equal(policy(obs), act)
    rebuilt = ActorCritic(**policy.config)
    rebuilt.load_state_dict(policy.state_dict())
    assert torch.equal(rebuilt(obs), act)


def test_log_prob_entropy_match_torch_normal():
    torch.manual_seed(1)
    policy = ActorCritic(obs_dim=3, act_dim=2, hidden_sizes=(8,), init_log_std=-0.5)
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-0.5, 0.3]))
    obs = torch.randn(10, 3)
    policy.update_obs_normalizer(obs * 2 + 1)
    action, logp, ent, value = policy.get_action_and_value(obs)
    assert action.shape == (10, 2) and logp.shape == ent.shape == value.shape == (10,)
    mean = policy.actor_mean(policy.normalize(obs))
    dist = torch.distributions.Normal(mean, policy.log_std.exp())
    torch.testing.assert_close(logp, dist.log_prob(action).sum(-1))
    torch.testing.assert_close(ent, dist.entropy().sum(-1))
    torch.testing.assert_close(value, policy.get_value(obs))
    # Evaluating a given (out-of-bounds) action uses the unclipped density.
    big = torch.full((10, 2), 5.0)
    _, logp_big, _, _ = policy.get_action_and_value(obs, big)
    torch.testing.assert_close(logp_big, dist.log_prob(big).sum(-1))
    # Seeded sampling is reproducible.
    a1 = policy.get_action_and_value(obs, generator=torch.Generator().manual_seed(3))[0]
    a2 = policy.get_action_and_value(obs, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a1, a2)


def test_actor_critic_rejects_bad_args():
    with pytest.raises(ValueError, match="activation"):
        ActorCritic(obs_dim=3, activation="sigmoidish")
    with pytest.raises(ValueError, match="action_low"):
        ActorCritic(obs_dim=3, action_low=1.0, action_high=-1.0)


# --------------------------------------------------------------------------- config


def test_ppo_config_validation():
    with pytest.raises(ValueError, match="learnig_rate"):
        PPOConfig.from_dict({"learnig_rate": 1e-3})
    with pytest.raises(ValueError, match="learning_rate"):
        PPOConfig.from_dict({"learning_rate": -1e-3})
    for bad in ({"n_epochs": 0}, {"clip_coef": 0.0}, {"gamma": 1.5}, {"gae_lambda": -0.1},
                {"minibatch_size": 0}, {"target_kl": -0.1}, {"max_grad_norm": 0}, {"anneal_lr": "yes"}):
        key = next(iter(bad))
        with pytest.raises(ValueError, match=key):
            PPOConfig.from_dict(bad)
    cfg = PPOConfig.from_dict({"learning_rate": "3e-4", "target_kl": None, "n_epochs": 4})
    assert cfg.learning_rate == pytest.approx(3e-4) and cfg.target_kl is None and cfg.n_epochs == 4
    assert PPOConfig.from_dict(cfg.to_dict()) == cfg
    assert PPOConfig.from_dict({}) == PPOConfig()


def test_explained_variance():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(np.full(4, y.mean()), y) == pytest.approx(0.0)
    assert math.isnan(explained_variance(y, np.ones(4)))


# --------------------------------------------------------------------------- agent


def _collect_bandit(policy, buf, gen, target=0.7):
    """1-step episodes, constant observation, reward = -(clip(a) - target)^2."""
    buf.reset()
    obs = torch.ones(buf.n_envs, 1)
    for _ in range(buf.n_steps):
        with torch.no_grad():
            action, logp, _, value = policy.get_action_and_value(obs, generator=gen)
        a = action.clamp(policy.action_low, policy.action_high)
        reward = -((a[:, 0] - target) ** 2)
        buf.add(obs, action, reward, torch.ones(buf.n_envs), value, logp)
    buf.compute_returns_and_advantage(torch.zeros(buf.n_envs), torch.ones(buf.n_envs), gamma=0.99, gae_lambda=0.95)


def test_ppo_solves_continuous_bandit():
    torch.manual_seed(0)
    policy = ActorCritic(obs_dim=1, hidden_sizes=(32, 32), normalize_obs=False)
    cfg = PPOConfig(learning_rate=3e-3, anneal_lr=False, n_epochs=10, minibatch_size=64, target_kl=None)
    agent = PPOAgent(policy, cfg, seed=0)
    buf = RolloutBuffer(n_steps=4, n_envs=64, obs_dim=1, act_dim=1)
    gen = torch.Generator().manual_seed(0)
    obs = torch.ones(1, 1)
    start = time.perf_counter()
    stats = None
    for it in range(60):
        _collect_bandit(policy, buf, gen)
        stats = agent.update(buf)
        if abs(policy.act_deterministic(obs).item() - 0.7) < 0.05:
            break
    elapsed = time.perf_counter() - start
    final = policy.act_deterministic(obs).item()
    assert abs(final - 0.7) < 0.1, (final, it)
    assert elapsed < 10.0
    assert set(stats) == STAT_KEYS
    assert all(math.isfinite(v) for v in stats.values())


def test_update_stats_and_early_stop():
    torch.manual_seed(0)
    policy = ActorCritic(obs_dim=1, hidden_sizes=(16,))
    buf = RolloutBuffer(n_steps=8, n_envs=16, obs_dim=1, act_dim=1)
    gen = torch.Generator().manual_seed(1)
    policy.update_obs_normalizer(torch.ones(4, 1))
    _collect_bandit(policy, buf, gen)

    agent = PPOAgent(policy, PPOConfig(n_epochs=3, minibatch_size=32, clip_vloss=True, ent_coef=0.01))
    assert agent.set_learning_rate(0.5) == pytest.approx(1.5e-4)
    stats = agent.update(buf)
    assert set(stats) == STAT_KEYS
    assert all(math.isfinite(float(v)) for v in stats.values())
    assert stats["learning_rate"] == pytest.approx(1.5e-4)
    assert stats["n_epochs_done"] == 3
    assert stats["approx_kl"] >= 0 and 0 <= stats["clip_fraction"] <= 1
    assert stats["std"] == pytest.approx(math.exp(-1.0), rel=0.05)

    # A huge step size makes the KL explode after the first gradient step -> early stop.
    _collect_bandit(policy, buf, gen)
    greedy = PPOAgent(policy, PPOConfig(learning_rate=1.0, anneal_lr=False, n_epochs=10,
                                        minibatch_size=16, target_kl=1e-6))
    stats = greedy.update(buf)
    assert stats["n_epochs_done"] == 1
    assert stats["approx_kl"] > 0

    with pytest.raises(ValueError):
        agent.set_learning_rate(1.5)


def _make_agent(model_seed: int, agent_seed: int):
    torch.manual_seed(model_seed)
    policy = ActorCritic(obs_dim=1, hidden_sizes=(16, 16))
    cfg = PPOConfig(learning_rate=1e-3, n_epochs=3, minibatch_size=32, target_kl=None)
    return PPOAgent(policy, cfg, seed=agent_seed)


def _make_buffer(seed: int) -> RolloutBuffer:
    rng = np.random.default_rng(seed)
    buf = RolloutBuffer(n_steps=8, n_envs=16, obs_dim=1, act_dim=1)
    _fill_random(buf, rng)
    buf.compute_returns_and_advantage(np.zeros(16), np.zeros(16), gamma=0.99, gae_lambda=0.95)
    return buf


def test_agent_state_dict_round_trip_is_bit_identical():
    buf1, buf2, buf3 = _make_buffer(1), _make_buffer(2), _make_buffer(3)

    reference = _make_agent(model_seed=0, agent_seed=7)
    reference.policy.update_obs_normalizer(torch.as_tensor(buf1.observations.reshape(-1, 1)))
    reference.update(buf1)
    reference.set_learning_rate(0.5)
    reference.update(buf2)
    reference.update(buf3)

    first = _make_agent(model_seed=0, agent_seed=7)
    first.policy.update_obs_normalizer(torch.as_tensor(buf1.observations.reshape(-1, 1)))
    first.update(buf1)
    first.set_learning_rate(0.5)
    blob = io.BytesIO()
    torch.save(first.state_dict(), blob)
    blob.seek(0)

    resumed = _make_agent(model_seed=99, agent_seed=12345)  # different init and shuffling seed
    resumed.load_state_dict(torch.load(blob, weights_only=False))
    assert resumed.learning_rate == reference.learning_rate
    resumed.update(buf2)
    resumed.update(buf3)

    ref_state, res_state = reference.policy.state_dict(), resumed.policy.state_dict()
    assert ref_state.keys() == res_state.keys()
    for k in ref_state:
        assert torch.equal(ref_state[k], res_state[k]), k
    assert torch.equal(reference.generator.get_state(), resumed.generator.get_state())

    # Sanity: without restoring the shuffling RNG the result differs.
    other = _make_agent(model_seed=99, agent_seed=12345)
    state = first.state_dict()
    state["generator_state"] = torch.Generator().manual_seed(4242).get_state()
    other.load_state_dict(state)
    other.update(buf2)
    other.update(buf3)
    assert any(not torch.equal(p, q) for p, q in zip(reference.policy.parameters(), other.policy.parameters()))


# --------------------------------------------------------------------------- logger


def test_logger_writes_csv_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    with Logger(run_dir) as logger:
        logger.record("rollout/ep_cost_mean", 12.5)
        logger.record("train/approx_kl", torch.tensor(0.01))
        logger.record_mean("time/fps", 100)
        logger.record_mean("time/fps", 200)
        out = logger.dump(step=1000)
        assert out == {"rollout/ep_cost_mean": 12.5, "train/approx_kl": pytest.approx(0.01), "time/fps": 150.0}
        logger.record("rollout/ep_cost_mean", 10.0)
        logger.record("eval/cost", np.float32(3.0))  # new key appears later
        logger.dump(step=2000)
        assert logger.dump(step=3000) == {}
        with pytest.raises(TypeError):
            logger.record("bad", [1, 2])

    with open(run_dir / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert list(rows[0].keys()) == ["step", "rollout/ep_cost_mean", "train/approx_kl", "time/fps", "eval/cost"]
    assert rows[0]["step"] == "1000" and float(rows[0]["time/fps"]) == 150.0 and rows[0]["eval/cost"] == ""
    assert rows[1]["step"] == "2000" and float(rows[1]["rollout/ep_cost_mean"]) == 10.0
    assert float(rows[1]["eval/cost"]) == 3.0 and rows[1]["train/approx_kl"] == ""

    events = glob.glob(os.path.join(run_dir, "events.out.tfevents*"))
    assert events and os.path.getsize(events[0]) > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert "rollout/ep_cost_mean" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("rollout/ep_cost_mean")] == [1000, 2000]
