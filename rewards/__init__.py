"""Search rewards: pure functions of floats (imports nothing else from the project)."""

from rewards.reward import LATENCY_CONSTRAINTS, latency_target_reward, training_aware_reward

__all__ = ["LATENCY_CONSTRAINTS", "latency_target_reward", "training_aware_reward"]
