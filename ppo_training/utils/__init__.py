"""Rollout storage and logging utilities."""

from ppo_training.utils.logger import Logger
from ppo_training.utils.rollout_buffer import RolloutBuffer, RolloutBufferSamples

__all__ = ["Logger", "RolloutBuffer", "RolloutBufferSamples"]
