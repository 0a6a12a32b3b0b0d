"""Search rewards: pure functions of floats (imports nothing else from the project)."""

from rewards.reward import (
    INTERVAL_Z,
    IQR_PER_STANDARD_DEVIATION,
    LATENCY_CONSTRAINTS,
    NOISE_Z,
    PARAMS_EXPONENT,
    STEP_TIME_EXPONENT,
    RewardFactors,
    accuracy_standard_error,
    latency_target_reward,
    noise_margin,
    reward_factors,
    reward_noise,
    training_aware_reward,
    within_noise,
)

__all__ = ["INTERVAL_Z", "IQR_PER_STANDARD_DEVIATION", "LATENCY_CONSTRAINTS", "NOISE_Z", "PARAMS_EXPONENT",
           "STEP_TIME_EXPONENT",
           "RewardFactors", "accuracy_standard_error", "latency_target_reward", "noise_margin", "reward_factors",
           "reward_noise", "training_aware_reward", "within_noise"]
