"""Gaussian actor-critic network with a built-in observation normaliser.

The policy is a diagonal Gaussian whose mean comes from an MLP ("actor") and
whose standard deviation is a learnable, state-independent parameter
(``log_std``), as in Schulman et al. 2017, "Proximal Policy Optimization
Algorithms" (arXiv:1707.06347), Section 6.1. The state value comes from a
separate MLP ("critic"); the two networks share no weights.

Every method takes *raw* observations: the running mean / variance normaliser
is part of the module (its statistics are buffers in ``state_dict``), so an
exported graph (``forward`` == ``act_deterministic``) includes normalisation.

Action clipping convention (Stable-Baselines3): actions are sampled from the
unclipped Gaussian and their log-probabilities refer to that unclipped sample;
the environment clips actions to ``[action_low, action_high]``. Only the
deterministic action (the Gaussian mean) is clamped by the policy itself.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

__all__ = ["RunningMeanStd", "ActorCritic", "layer_init"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class RunningMeanStd(nn.Module):
    """Running per-feature mean and (population) variance of observations.

    Statistics are merged batch by batch with the parallel algorithm of
    Chan, Golub & LeVeque 1979 ("Updating formulae and a pairwise algorithm
    for computing sample variances"): for a stored ``(mean_a, var_a, n_a)``
    and a batch ``(mean_b, var_b, n_b)``::

        delta = mean_b - mean_a
        n     = n_a + n_b
        mean  = mean_a + delta * n_b / n
        M2    = var_a * n_a + var_b * n_b + delta**2 * n_a * n_b / n
        var   = M2 / n

    The merge is computed in float64; the buffers are stored as float32 (so
    an ONNX export gets float32 constants). ``var`` is the population
    variance (``ddof=0``, like ``numpy.var``). Before the first update the
    statistics are ``mean = 0``, ``var = 1``, ``count = 0`` (identity
    transform apart from clipping).

    Args:
        shape: number of features ``D``.
        clip: normalised values are clamped to ``[-clip, clip]``.
        epsilon: added to the variance before the square root.

    Buffers (all in ``state_dict``):
        mean: ``[D]`` float32.
        var: ``[D]`` float32.
        count: ``[]`` float32, number of samples seen.
    """

    def __init__(self, shape: int, clip: float = 10.0, epsilon: float = 1e-8) -> None:
        super().__init__()
        if int(shape) < 1:
            raise ValueError(f"RunningMeanStd shape must be >= 1, got {shape}")
        if not clip > 0:
            raise ValueError(f"RunningMeanStd clip must be > 0, got {clip}")
        if not epsilon >= 0:
            raise ValueError(f"RunningMeanStd epsilon must be >= 0, got {epsilon}")
        self.shape = int(shape)
        self.clip = float(clip)
        self.epsilon = float(epsilon)
        self.register_buffer("mean", torch.zeros(self.shape, dtype=torch.float32))
        self.register_buffer("var", torch.ones(self.shape, dtype=torch.float32))
        self.register_buffer("count", torch.zeros((), dtype=torch.float32))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Merge a batch of observations into the running statistics.

        Args:
            x: ``[B, D]`` (any leading dims are flattened; ``[D]`` counts as
                one sample). An empty batch is ignored.

        Raises:
            ValueError: if the last dimension is not ``D``.
        """
        x = torch.as_tensor(x)
        if x.shape[-1] != self.shape:
            raise ValueError(
                f"RunningMeanStd.update expected last dim {self.shape}, got shape {tuple(x.shape)}"
            )
        x = x.reshape(-1, self.shape).to(device=self.mean.device, dtype=torch.float64)
        batch_count = x.shape[0]
        if batch_count == 0:
            return
        batch_mean = x.mean(dim=0)
        batch_var = x.var(dim=0, unbiased=False)

        mean_a = self.mean.to(torch.float64)
        var_a = self.var.to(torch.float64)
        n_a = self.count.to(torch.float64)
        n_b = float(batch_count)

        delta = batch_mean - mean_a
        tot = n_a + n_b
        new_mean = mean_a + delta * (n_b / tot)
        m2 = var_a * n_a + batch_var * n_b + delta.square() * (n_a * n_b / tot)
        new_var = m2 / tot

        self.mean.copy_(new_mean.to(self.mean.dtype))
        self.var.copy_(new_var.to(self.var.dtype))
        self.count.copy_(tot.to(self.count.dtype))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (``[..., D]``): ``clamp((x - mean) / sqrt(var + eps), -clip, clip)``."""
        mean = self.mean.to(x.dtype)
        var = self.var.to(x.dtype)
        return torch.clamp((x - mean) / torch.sqrt(var + self.epsilon), -self.clip, self.clip)


def layer_init(layer: nn.Linear, std: float = math.sqrt(2.0), bias_const: float = 0.0) -> nn.Linear:
    """Orthogonal weight init with gain ``std`` and constant bias (in place).

    Source: Saxe et al. 2014 (orthogonal init); the gains sqrt(2) / 0.01 / 1.0
    follow the PPO implementation details of Huang et al. 2022 ("The 37
    Implementation Details of Proximal Policy Optimization", ICLR blog track).
    """
    nn.init.orthogonal_(layer.weight, gain=std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


def _mlp(in_dim: int, hidden_sizes: Sequence[int], out_dim: int, activation: str, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    last = in_dim
    for h in hidden_sizes:
        layers.append(layer_init(nn.Linear(last, h), std=math.sqrt(2.0)))
        layers.append(_ACTIVATIONS[activation]())
        last = h
    layers.append(layer_init(nn.Linear(last, out_dim), std=out_gain))
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Separate actor / critic MLPs with a state-independent Gaussian std.

    Args:
        obs_dim: observation size ``D`` (>= 1).
        act_dim: action size ``A`` (>= 1); 1 for steering.
        hidden_sizes: hidden layer widths, shared layout (not weights) for
            actor and critic; may be empty (linear networks).
        activation: one of ``"tanh"``, ``"relu"``, ``"elu"``, ``"gelu"``, ``"silu"``.
        action_low, action_high: the bounds the environment clips actions to
            (steering command units); ``act_deterministic`` clamps to them.
        init_log_std: initial value of every entry of ``log_std`` (natural log
            of the Gaussian std, in action units).
        normalize_obs: if True, observations pass through a
            :class:`RunningMeanStd` (updated only by ``update_obs_normalizer``);
            if False the normaliser is the identity.
        base_weights: optional fixed ``[D]`` weights of a linear base controller
            on the *raw* observation (e.g. the PID written over the observation's
            error features). The Gaussian mean is then ``obs @ base_weights +
            actor_mlp(normalize(obs))``: the network learns a residual on top of
            the base; its output layer is initialised to zero, so the policy starts
            exactly at the base controller. Not trained; stored as a buffer (exported).
        input_mask: optional fixed ``[D]`` 0/1 weights multiplied into the
            normalised observation: the actor and critic networks do not see
            features with weight 0 (the base controller still does). For
            ablations of the observation (e.g. hiding the future plan).

    Raises:
        ValueError: on non-positive sizes, an unknown activation, or
            ``action_low >= action_high``.

    Attributes:
        config: dict of the constructor arguments; ``ActorCritic(**config)``
            rebuilds an identically shaped module (then ``load_state_dict``).
        obs_rms: the normaliser (``RunningMeanStd``) or ``None``.
        log_std: ``[A]`` learnable parameter.

    Note on the normaliser: the statistics are frozen except when
    ``update_obs_normalizer`` is called. To keep the PPO probability ratio
    exactly 1 at the start of an update, update the statistics *between*
    PPO updates (e.g. with the rollout's observations after
    ``PPOAgent.update``), not between collecting a sample and training on it.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int = 1,
        hidden_sizes: Sequence[int] = (128, 128),
        activation: str = "tanh",
        action_low: float = -2.0,
        action_high: float = 2.0,
        init_log_std: float = -1.0,
        normalize_obs: bool = True,
        base_weights: Sequence[float] | None = None,
        input_mask: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        obs_dim = int(obs_dim)
        act_dim = int(act_dim)
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if obs_dim < 1:
            raise ValueError(f"obs_dim must be >= 1, got {obs_dim}")
        if act_dim < 1:
            raise ValueError(f"act_dim must be >= 1, got {act_dim}")
        if any(h < 1 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must all be >= 1, got {hidden_sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        action_low = float(action_low)
        action_high = float(action_high)
        if not (math.isfinite(action_low) and math.isfinite(action_high) and action_low < action_high):
            raise ValueError(
                f"need finite action_low < action_high, got action_low={action_low}, action_high={action_high}"
            )
        if not math.isfinite(float(init_log_std)):
            raise ValueError(f"init_log_std must be finite, got {init_log_std}")

        self.config: dict[str, Any] = {
            "obs_dim": obs_dim,
            "act_dim": act_dim,
            "hidden_sizes": list(hidden_sizes),
            "activation": activation,
            "action_low": action_low,
            "action_high": action_high,
            "init_log_std": float(init_log_std),
            "normalize_obs": bool(normalize_obs),
            "base_weights": None if base_weights is None else [float(w) for w in base_weights],
            "input_mask": None if input_mask is None else [float(w) for w in input_mask],
        }
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.action_low = action_low
        self.action_high = action_high

        self.obs_rms: RunningMeanStd | None = RunningMeanStd(obs_dim) if normalize_obs else None
        self.actor_mean = _mlp(obs_dim, hidden_sizes, act_dim, activation, out_gain=0.01)
        self.critic = _mlp(obs_dim, hidden_sizes, 1, activation, out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std), dtype=torch.float32))
        if base_weights is not None:
            if len(base_weights) != obs_dim or act_dim != 1:
                raise ValueError(f"base_weights needs obs_dim={obs_dim} entries and act_dim=1, got "
                                 f"{len(base_weights)} entries, act_dim={act_dim}")
            self.register_buffer("base_weights", torch.tensor(base_weights, dtype=torch.float32)[:, None])
            # The residual's output layer starts at zero, so the policy's mean starts exactly at
            # its base controller (the hidden layers still receive gradients through it).
            nn.init.zeros_(self.actor_mean[-1].weight)
            nn.init.zeros_(self.actor_mean[-1].bias)
        else:
            self.base_weights = None
        if input_mask is not None:
            if len(input_mask) != obs_dim:
                raise ValueError(f"input_mask needs obs_dim={obs_dim} entries, got {len(input_mask)}")
            self.register_buffer("input_mask", torch.tensor(input_mask, dtype=torch.float32))
        else:
            self.input_mask = None

    # ------------------------------------------------------------------ helpers
    def normalize(self, obs: Tensor) -> Tensor:
        """Normalised observations ``[B, D]`` (identity if ``normalize_obs=False``), times
        ``input_mask`` when one is set."""
        x = obs if self.obs_rms is None else self.obs_rms(obs)
        return x if self.input_mask is None else x * self.input_mask

    @torch.no_grad()
    def update_obs_normalizer(self, obs: Tensor) -> None:
        """Merge raw observations ``[B, D]`` into the normaliser statistics (no-op if disabled)."""
        if self.obs_rms is not None:
            self.obs_rms.update(obs)

    def action_mean(self, obs: Tensor) -> Tensor:
        """Unclamped Gaussian mean ``[B, A]`` for raw observations ``[B, D]``."""
        return self._mean(obs, self.normalize(obs))

    def _mean(self, obs: Tensor, norm_obs: Tensor) -> Tensor:
        mean = self.actor_mean(norm_obs)
        if self.base_weights is not None:
            mean = mean + obs @ self.base_weights
        return mean

    def distribution(self, obs: Tensor) -> torch.distributions.Normal:
        """Diagonal Gaussian ``N(mean(obs), exp(log_std))``, batch shape ``[B, A]``."""
        mean = self.action_mean(obs)
        std = torch.exp(self.log_std).expand_as(mean)
        return torch.distributions.Normal(mean, std)

    # ------------------------------------------------------------------ API
    def get_value(self, obs: Tensor) -> Tensor:
        """State value ``V(obs)``, shape ``[B]`` (cost-to-go in reward units)."""
        return self.critic(self.normalize(obs)).squeeze(-1)

    def get_action_and_value(
        self,
        obs: Tensor,
        action: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sample (or evaluate) an action and return its statistics.

        Args:
            obs: raw observations ``[B, D]``.
            action: ``[B, A]`` unclipped actions to evaluate; if None, one is
                sampled as ``mean + std * eps`` with ``eps ~ N(0, I)`` drawn
                from ``generator`` (global RNG when None).
            generator: optional RNG for the sampling noise (reproducibility).

        Returns:
            ``(action [B, A], log_prob [B], entropy [B], value [B])`` where
            ``log_prob`` is the log-density of the *unclipped* action summed
            over action dims and ``entropy`` is the Gaussian entropy summed
            over action dims.
        """
        norm_obs = self.normalize(obs)
        mean = self._mean(obs, norm_obs)
        std = torch.exp(self.log_std).expand_as(mean)
        dist = torch.distributions.Normal(mean, std)
        if action is None:
            with torch.no_grad():
                noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
                action = mean + std * noise
        elif action.dim() == 1 and self.act_dim == 1:
            action = action.unsqueeze(-1)
        log_prob = dist.log_prob(action).sum(-1)
        entropy = dist.entropy().sum(-1)
        value = self.critic(norm_obs).squeeze(-1)
        return action, log_prob, entropy, value

    def act_deterministic(self, obs: Tensor) -> Tensor:
        """Deterministic action ``clamp(mean(obs), action_low, action_high)``, shape ``[B, A]``."""
        return torch.clamp(self.action_mean(obs), self.action_low, self.action_high)

    def forward(self, obs: Tensor) -> Tensor:
        """Same as :meth:`act_deterministic`; this is the graph exported to ONNX."""
        return self.act_deterministic(obs)
