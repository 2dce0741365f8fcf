"""PPO training for the comma.ai Controls Challenge lateral control task."""
