"""Search rewards: pure functions of floats (imports nothing else from the project)."""

from rewards.reward import (
    LATENCY_CONSTRAINTS,
    PARAMS_EXPONENT,
    STEP_TIME_EXPONENT,
    RewardFactors,
    latency_target_reward,
    reward_factors,
    step_time_noise,
    training_aware_reward,
    within_noise,
)

__all__ = ["LATENCY_CONSTRAINTS", "PARAMS_EXPONENT", "STEP_TIME_EXPONENT", "RewardFactors", "latency_target_reward",
           "reward_factors", "step_time_noise", "training_aware_reward", "within_noise"]
