"""On-policy rollout storage with GAE, following Stable-Baselines3 conventions.

Layout: every array has leading dims ``[n_steps, n_envs]``. ``episode_starts[t, e]``
is 1 when observation ``observations[t, e]`` is the first of a new episode
(i.e. the previous step of env ``e`` ended an episode); ``dones`` passed to
:meth:`RolloutBuffer.compute_returns_and_advantage` says whether the step
*after* the last stored one starts a new episode.

Truncation (time limits): the buffer treats every episode boundary as
terminal. For an episode that was *truncated* rather than terminated, the
trainer must bootstrap by adding ``gamma * V(terminal_obs)`` to that step's
reward before calling :meth:`RolloutBuffer.add` (the SB3 approach, see
``OnPolicyAlgorithm.collect_rollouts``), where ``terminal_obs`` is the final
observation of the truncated episode.

Advantages use Generalized Advantage Estimation (Schulman et al. 2016,
"High-Dimensional Continuous Control Using Generalized Advantage Estimation",
arXiv:1506.02438, Eq. 16):

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - done_{t+1}) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - done_{t+1}) * A_{t+1}
    R_t     = A_t + V(s_t)        (the TD(lambda) return, value target)
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["RolloutBuffer", "RolloutBufferSamples"]


class RolloutBufferSamples(NamedTuple):
    """One minibatch (float32 torch tensors on the buffer's device).

    Fields: ``observations [B, obs_dim]``, ``actions [B, act_dim]``,
    ``old_values [B]``, ``old_log_prob [B]``, ``advantages [B]``, ``returns [B]``.
    """

    observations: Tensor
    actions: Tensor
    old_values: Tensor
    old_log_prob: Tensor
    advantages: Tensor
    returns: Tensor


def _to_numpy(x, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"RolloutBuffer.add: {name} has shape {arr.shape}, expected {shape}")
    return arr.reshape(shape)


class RolloutBuffer:
    """Fixed-size storage for ``n_steps`` transitions from each of ``n_envs`` envs.

    Args:
        n_steps: transitions per env per rollout (>= 1).
        n_envs: number of parallel environments (>= 1).
        obs_dim: observation size.
        act_dim: action size.
        device: torch device for the tensors yielded by :meth:`get`.

    Attributes (numpy float32, leading dims ``[n_steps, n_envs]``):
        observations ``[.., obs_dim]``, actions ``[.., act_dim]``, rewards,
        episode_starts, values, log_probs, advantages, returns.
        pos: number of steps stored so far; full: ``pos == n_steps``.
    """

    def __init__(self, n_steps: int, n_envs: int, obs_dim: int, act_dim: int, device: str | torch.device = "cpu") -> None:
        for name, v in (("n_steps", n_steps), ("n_envs", n_envs), ("obs_dim", obs_dim), ("act_dim", act_dim)):
            if int(v) < 1:
                raise ValueError(f"RolloutBuffer {name} must be >= 1, got {v}")
        self.n_steps = int(n_steps)
        self.n_envs = int(n_envs)
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.device = torch.device(device)
        self.reset()

    @property
    def buffer_size(self) -> int:
        """Total transitions ``n_steps * n_envs``."""
        return self.n_steps * self.n_envs

    def reset(self) -> None:
        """Zero all storage and rewind to position 0."""
        shape = (self.n_steps, self.n_envs)
        self.observations = np.zeros(shape + (self.obs_dim,), dtype=np.float32)
        self.actions = np.zeros(shape + (self.act_dim,), dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.episode_starts = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.log_probs = np.zeros(shape, dtype=np.float32)
        self.advantages = np.zeros(shape, dtype=np.float32)
        self.returns = np.zeros(shape, dtype=np.float32)
        self.pos = 0
        self.full = False
        self.returns_computed = False

    def add(self, obs, action, reward, episode_start, value, log_prob) -> None:
        """Store one step of all envs (numpy arrays or torch tensors).

        Args:
            obs: ``[n_envs, obs_dim]`` observation the action was taken in.
            action: ``[n_envs, act_dim]`` unclipped sampled action.
            reward: ``[n_envs]`` reward (with ``gamma * V(terminal_obs)`` already
                added for truncated episodes, see module docstring).
            episode_start: ``[n_envs]`` 1/True if ``obs`` starts an episode.
            value: ``[n_envs]`` (or ``[n_envs, 1]``) critic value of ``obs``.
            log_prob: ``[n_envs]`` log-prob of ``action`` under the behaviour policy.

        Raises:
            RuntimeError: if the buffer is already full.
            ValueError: on a size mismatch.
        """
        if self.full:
            raise RuntimeError("RolloutBuffer.add called on a full buffer; call reset() first")
        n = self.n_envs
        t = self.pos
        self.observations[t] = _to_numpy(obs, "obs", (n, self.obs_dim))
        self.actions[t] = _to_numpy(action, "action", (n, self.act_dim))
        self.rewards[t] = _to_numpy(reward, "reward", (n,))
        self.episode_starts[t] = _to_numpy(episode_start, "episode_start", (n,))
        self.values[t] = _to_numpy(value, "value", (n,))
        self.log_probs[t] = _to_numpy(log_prob, "log_prob", (n,))
        self.pos += 1
        self.returns_computed = False
        if self.pos == self.n_steps:
            self.full = True

    def compute_returns_and_advantage(self, last_values, dones, gamma: float, gae_lambda: float) -> None:
        """Fill ``advantages`` (GAE) and ``returns = advantages + values``.

        Args:
            last_values: ``[n_envs]`` ``V(s_T)`` of the observation after the last
                stored step (ignored where ``dones`` is 1).
            dones: ``[n_envs]`` 1 if the last stored step ended its episode.
            gamma: discount in ``[0, 1]``.
            gae_lambda: GAE lambda in ``[0, 1]``.

        Raises:
            RuntimeError: if the buffer is not full.

        The recursion (GAE, Schulman et al. 2016, Eq. 16) is evaluated in float64.
        """
        if not self.full:
            raise RuntimeError(f"compute_returns_and_advantage needs a full buffer (pos={self.pos}/{self.n_steps})")
        last_values = _to_numpy(last_values, "last_values", (self.n_envs,)).astype(np.float64)
        dones = _to_numpy(dones, "dones", (self.n_envs,)).astype(np.float64)
        values = self.values.astype(np.float64)
        rewards = self.rewards.astype(np.float64)
        starts = self.episode_starts.astype(np.float64)

        advantages = np.zeros_like(values)
        last_gae_lam = np.zeros(self.n_envs, dtype=np.float64)
        for step in reversed(range(self.n_steps)):
            if step == self.n_steps - 1:
                next_non_terminal = 1.0 - dones
                next_values = last_values
            else:
                next_non_terminal = 1.0 - starts[step + 1]
                next_values = values[step + 1]
            delta = rewards[step] + gamma * next_values * next_non_terminal - values[step]
            last_gae_lam = delta + gamma * gae_lambda * next_non_terminal * last_gae_lam
            advantages[step] = last_gae_lam
        self.advantages[:] = advantages.astype(np.float32)
        self.returns[:] = (advantages + values).astype(np.float32)
        self.returns_computed = True

    @staticmethod
    def _swap_and_flatten(arr: np.ndarray) -> np.ndarray:
        """``[n_steps, n_envs, ...]`` -> ``[n_envs * n_steps, ...]`` (env-major, as SB3)."""
        shape = arr.shape
        return arr.swapaxes(0, 1).reshape(shape[0] * shape[1], *shape[2:])

    def get(self, batch_size: int | None = None, generator: torch.Generator | None = None) -> Iterator[RolloutBufferSamples]:
        """Yield shuffled minibatches covering every stored transition exactly once.

        Args:
            batch_size: minibatch size; ``None`` yields the whole buffer as one
                batch. The last minibatch is smaller when ``batch_size`` does
                not divide ``n_steps * n_envs``.
            generator: CPU ``torch.Generator`` for the permutation (reproducible
                shuffling); the global RNG when None.

        Raises:
            RuntimeError: if the buffer is not full or returns were not computed.
            ValueError: if ``batch_size < 1``.
        """
        if not self.full:
            raise RuntimeError(f"RolloutBuffer.get needs a full buffer (pos={self.pos}/{self.n_steps})")
        if not self.returns_computed:
            raise RuntimeError("RolloutBuffer.get called before compute_returns_and_advantage")
        total = self.buffer_size
        if batch_size is None:
            batch_size = total
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch_size = int(batch_size)

        def t(arr: np.ndarray) -> Tensor:
            return torch.as_tensor(self._swap_and_flatten(arr), device=self.device)

        obs, act = t(self.observations), t(self.actions)
        vals, logp = t(self.values), t(self.log_probs)
        adv, ret = t(self.advantages), t(self.returns)

        indices = torch.randperm(total, generator=generator).to(self.device)
        for start in range(0, total, batch_size):
            idx = indices[start : start + batch_size]
            yield RolloutBufferSamples(
                observations=obs[idx],
                actions=act[idx],
                old_values=vals[idx],
                old_log_prob=logp[idx],
                advantages=adv[idx],
                returns=ret[idx],
            )
