"""Policy network and PPO update rule."""

from ppo_training.policy.actor_critic import ActorCritic, RunningMeanStd
from ppo_training.policy.ppo_agent import PPOAgent, PPOConfig, explained_variance

__all__ = ["ActorCritic", "RunningMeanStd", "PPOAgent", "PPOConfig", "explained_variance"]
