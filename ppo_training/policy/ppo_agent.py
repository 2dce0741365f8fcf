"""PPO-Clip update (Schulman et al. 2017, arXiv:1707.06347) in the style of CleanRL.

One call of :meth:`PPOAgent.update` runs ``n_epochs`` passes of shuffled
minibatches over a full :class:`~ppo_training.utils.rollout_buffer.RolloutBuffer`
and minimises, per minibatch,

    loss = L_clip + vf_coef * L_value - ent_coef * H

with (ratio r = pi_new(a|s) / pi_old(a|s), A the advantage)

    L_clip  = mean(max(-A * r, -A * clip(r, 1 - clip_coef, 1 + clip_coef)))   (PPO paper, Eq. 7)
    L_value = 0.5 * mean((V - R)^2)                                          (clip_vloss=False)
    L_value = 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))  (clip_vloss=True)
    H       = mean Gaussian entropy

Implementation details (Huang et al. 2022, "The 37 Implementation Details of
PPO"): per-minibatch advantage normalisation, global gradient-norm clipping,
Adam with eps=1e-5, linear learning-rate annealing, and early stopping on the
approximate KL divergence ``k3 = mean((r - 1) - log r)`` (Schulman 2020,
"Approximating KL Divergence", http://joschu.net/blog/kl-approx.html).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ppo_training.policy.actor_critic import ActorCritic

__all__ = ["PPOConfig", "PPOAgent", "explained_variance"]

UPDATE_STAT_KEYS = (
    "policy_loss",
    "value_loss",
    "entropy",
    "clip_fraction",
    "approx_kl",
    "explained_variance",
    "learning_rate",
    "n_epochs_done",
    "std",
)


def explained_variance(y_pred, y_true) -> float:
    """Fraction of the variance of ``y_true`` explained by ``y_pred``.

    ``ev = 1 - Var[y_true - y_pred] / Var[y_true]`` (as in SB3's
    ``explained_variance``): 1 is perfect, 0 is no better than a constant,
    negative is worse. Returns NaN when ``Var[y_true] == 0``.

    Args:
        y_pred, y_true: 1-D arrays / tensors of equal length (flattened otherwise).
    """
    if isinstance(y_pred, torch.Tensor):
        y_pred = y_pred.detach().cpu().numpy()
    if isinstance(y_true, torch.Tensor):
        y_true = y_true.detach().cpu().numpy()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    if y_pred.shape != y_true.shape:
        raise ValueError(f"explained_variance: shapes differ {y_pred.shape} vs {y_true.shape}")
    var_y = np.var(y_true)
    if var_y == 0:
        return float("nan")
    return float(1.0 - np.var(y_true - y_pred) / var_y)


@dataclass
class PPOConfig:
    """PPO hyperparameters.

    Attributes:
        learning_rate: initial Adam step size (> 0).
        anneal_lr: linearly anneal the step size to 0 (see ``PPOAgent.set_learning_rate``).
        n_epochs: passes over the rollout per update (>= 1).
        minibatch_size: transitions per gradient step (>= 1).
        gamma: discount factor in [0, 1].
        gae_lambda: GAE lambda in [0, 1].
        clip_coef: PPO ratio clip epsilon (> 0); also the value clip range.
        clip_vloss: clip the value loss around the rollout values (CleanRL style).
        vf_coef: value-loss weight (>= 0).
        ent_coef: entropy-bonus weight (>= 0).
        max_grad_norm: global L2 gradient-norm clip (> 0).
        target_kl: stop the update early once approx KL exceeds this (> 0); None disables.
        norm_adv: normalise advantages per minibatch to zero mean / unit std.
        adam_eps: Adam epsilon (> 0).

    Raises:
        ValueError: (from ``__post_init__``) naming the first out-of-range field.
    """

    learning_rate: float = 3e-4
    anneal_lr: bool = True
    n_epochs: int = 10
    minibatch_size: int = 256
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    clip_vloss: bool = False
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    target_kl: float | None = 0.02
    norm_adv: bool = True
    adam_eps: float = 1e-5

    _BOOL_FIELDS = ("anneal_lr", "clip_vloss", "norm_adv")
    _INT_FIELDS = ("n_epochs", "minibatch_size")
    _FLOAT_FIELDS = (
        "learning_rate", "gamma", "gae_lambda", "clip_coef", "vf_coef",
        "ent_coef", "max_grad_norm", "target_kl", "adam_eps",
    )

    def __post_init__(self) -> None:
        for name in self._BOOL_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"PPOConfig.{name} must be a bool, got {v!r}")
            setattr(self, name, bool(v))
        for name in self._INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                else:
                    raise ValueError(f"PPOConfig.{name} must be an integer, got {v!r}")
            setattr(self, name, int(v))
        for name in self._FLOAT_FIELDS:
            v = getattr(self, name)
            if name == "target_kl" and v is None:
                continue
            if isinstance(v, str):
                # PyYAML (YAML 1.1) parses "3e-4" as a string; accept numeric strings.
                try:
                    v = float(v)
                except ValueError:
                    raise ValueError(f"PPOConfig.{name} must be a number, got {v!r}") from None
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"PPOConfig.{name} must be a number, got {v!r}")
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"PPOConfig.{name} must be finite, got {v!r}")
            setattr(self, name, v)

        checks = (
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("n_epochs", self.n_epochs >= 1, ">= 1"),
            ("minibatch_size", self.minibatch_size >= 1, ">= 1"),
            ("gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]"),
            ("gae_lambda", 0.0 <= self.gae_lambda <= 1.0, "in [0, 1]"),
            ("clip_coef", self.clip_coef > 0, "> 0"),
            ("vf_coef", self.vf_coef >= 0, ">= 0"),
            ("ent_coef", self.ent_coef >= 0, ">= 0"),
            ("max_grad_norm", self.max_grad_norm > 0, "> 0"),
            ("target_kl", self.target_kl is None or self.target_kl > 0, "> 0 or None"),
            ("adam_eps", self.adam_eps > 0, "> 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"PPOConfig.{name} must be {rule}, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "PPOConfig":
        """Build a config from a mapping; missing keys take the defaults.

        Raises:
            ValueError: naming every unknown key, or the first invalid value.
        """
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PPOConfig key(s): {', '.join(map(str, unknown))}; valid keys: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict copy of the fields (inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)


class PPOAgent:
    """Owns the optimiser and the minibatch-shuffling RNG for an :class:`ActorCritic`.

    Args:
        policy: the actor-critic to train (parameters updated in place).
        cfg: hyperparameters.
        seed: seed of the CPU ``torch.Generator`` used to shuffle minibatches.
    """

    def __init__(self, policy: ActorCritic, cfg: PPOConfig, seed: int = 0) -> None:
        self.policy = policy
        self.cfg = cfg
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    @property
    def learning_rate(self) -> float:
        """Current optimiser step size."""
        return float(self.optimizer.param_groups[0]["lr"])

    def set_learning_rate(self, frac_remaining: float) -> float:
        """Set ``lr = frac_remaining * cfg.learning_rate`` when ``cfg.anneal_lr``.

        CleanRL schedule: ``frac_remaining = 1 - (iteration - 1) / num_iterations``
        for 1-based iterations, so the first update uses the full rate. With
        ``anneal_lr=False`` the rate stays ``cfg.learning_rate``.

        Returns:
            The step size now in use.

        Raises:
            ValueError: if ``frac_remaining`` is outside [0, 1].
        """
        frac = float(frac_remaining)
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"frac_remaining must be in [0, 1], got {frac_remaining}")
        lr = frac * self.cfg.learning_rate if self.cfg.anneal_lr else self.cfg.learning_rate
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def update(self, buffer) -> dict[str, float]:
        """Run the PPO optimisation phase on a full rollout buffer.

        The buffer must be full with returns/advantages computed. Early
        stopping (SB3 style, but at ``target_kl`` rather than 1.5x): before each
        gradient step the minibatch's approx KL is computed; if it exceeds
        ``target_kl`` no step is taken and the update ends.

        Returns:
            Dict with exactly the keys ``policy_loss``, ``value_loss``,
            ``entropy``, ``clip_fraction``, ``approx_kl`` (means over the
            minibatches evaluated), ``explained_variance`` (rollout values vs
            returns, pre-update), ``learning_rate``, ``n_epochs_done`` (epochs
            started, including one interrupted by early stopping) and ``std``
            (mean policy std after the update).
        """
        cfg = self.cfg
        policy = self.policy
        policy.train()

        pg_losses: list[float] = []
        value_losses: list[float] = []
        entropies: list[float] = []
        clip_fractions: list[float] = []
        approx_kls: list[float] = []
        n_epochs_done = 0
        continue_training = True

        for _epoch in range(cfg.n_epochs):
            n_epochs_done += 1
            for batch in buffer.get(cfg.minibatch_size, generator=self.generator):
                _, new_log_prob, entropy, new_value = policy.get_action_and_value(
                    batch.observations, batch.actions
                )
                log_ratio = new_log_prob - batch.old_log_prob
                ratio = log_ratio.exp()

                with torch.no_grad():
                    # k3 estimator of KL(pi_old || pi_new), unbiased and >= 0.
                    approx_kl = ((ratio - 1.0) - log_ratio).mean().item()
                    clip_fraction = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean().item()
                approx_kls.append(approx_kl)
                if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                    continue_training = False
                    break
                clip_fractions.append(clip_fraction)

                advantages = batch.advantages
                if cfg.norm_adv and advantages.numel() > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                # Clipped surrogate objective (PPO paper Eq. 7), as a loss to minimise.
                pg_loss1 = -advantages * ratio
                pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - cfg.clip_coef, 1.0 + cfg.clip_coef)
                pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                if cfg.clip_vloss:
                    v_loss_unclipped = (new_value - batch.returns) ** 2
                    v_clipped = batch.old_values + torch.clamp(
                        new_value - batch.old_values, -cfg.clip_coef, cfg.clip_coef
                    )
                    v_loss_clipped = (v_clipped - batch.returns) ** 2
                    v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                else:
                    v_loss = 0.5 * ((new_value - batch.returns) ** 2).mean()

                entropy_mean = entropy.mean()
                loss = pg_loss - cfg.ent_coef * entropy_mean + cfg.vf_coef * v_loss

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()

                pg_losses.append(pg_loss.item())
                value_losses.append(v_loss.item())
                entropies.append(entropy_mean.item())
            if not continue_training:
                break

        def _mean(xs: list[float]) -> float:
            return float(np.mean(xs)) if xs else float("nan")

        with torch.no_grad():
            std = float(torch.exp(policy.log_std).mean().item())
        return {
            "policy_loss": _mean(pg_losses),
            "value_loss": _mean(value_losses),
            "entropy": _mean(entropies),
            "clip_fraction": _mean(clip_fractions),
            "approx_kl": _mean(approx_kls),
            "explained_variance": explained_variance(buffer.values, buffer.returns),
            "learning_rate": self.learning_rate,
            "n_epochs_done": n_epochs_done,
            "std": std,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically.

        Keys: ``policy`` (module state), ``policy_config`` (``ActorCritic``
        constructor args), ``optimizer`` (Adam state), ``generator_state``
        (shuffling RNG, uint8 tensor), ``ppo_config`` (dict).
        """
        return {
            "policy": self.policy.state_dict(),
            "policy_config": dict(self.policy.config),
            "optimizer": self.optimizer.state_dict(),
            "generator_state": self.generator.get_state(),
            "ppo_config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore policy, optimiser and shuffling RNG from :meth:`state_dict` output.

        ``ppo_config`` / ``policy_config`` are informational and not applied
        (the caller chooses the config of the resumed run).

        Raises:
            KeyError: if ``policy``, ``optimizer`` or ``generator_state`` is missing.
        """
        for key in ("policy", "optimizer", "generator_state"):
            if key not in state:
                raise KeyError(f"PPOAgent state is missing {key!r}")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator_state"].to(torch.uint8).cpu())
