"""MnasNet-style reinforcement-learning controller, as an Optuna sampler whose policy lives in the study.

MnasNet (Tan et al., 2019) and EfficientNetV2 (Tan & Le, 2021, Section 3.3) search with an RNN controller that
emits one decision at a time and learns from each candidate's reward by policy gradient (MnasNet uses PPO). This
controller uses the simpler REINFORCE with an exponential-moving-average reward baseline of Zoph & Le (2017),
plus an entropy bonus (as in ENAS, Pham et al., 2018), over a factorized policy: one independent categorical
distribution (a vector of logits) per flat decision, emitted in the space's stage-major order, instead of an
LSTM. The reasons:

* The stage-factorized space already is the factorization: its decisions are per stage (op, number of layers,
  kernel size, expansion ratio), as MnasNet's factorized hierarchical space is per block. A few logits per
  decision learn from a few hundred rewards (the learning test shows it on the efficientnetv2-s space), while
  MnasNet's LSTM controller sampled about 8K models, more than a campaign of proxy trainings affords.
* The policy is a deterministic function of the study's finished trials, replayed in trial-number order
  (:mod:`nas.controllers.replay`), so a resumed campaign needs nothing but the database (DESIGN.md, section 2).
  With numpy only and a few dozen logits, replaying a thousand trials takes about 0.2 s on a CPU and gives the
  same policy in any process; no framework, device or optimizer state is involved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.controllers.params import DecisionSpace
from nas.controllers.replay import ReplayedSampler
from search_spaces.checks import check_real


@dataclass
class _Policy:
    """Everything the controller has learned: logits per decision and the running reward statistics."""

    logits: list[np.ndarray]
    #: Number of rewards taught so far.
    num_updates: int = 0
    #: Exponential moving average of the rewards (the REINFORCE baseline).
    baseline: float = 0.0
    #: Exponential moving average of the squared advantage (reward minus baseline), not bias-corrected.
    advantage_square: float = 0.0


class PolicyGradientSampler(ReplayedSampler[_Policy]):
    """REINFORCE over independent per-decision logits, rebuilt from the study's finished trials in order.

    Learning rule, applied once per teaching trial (see :mod:`nas.controllers.replay` for which trials teach and
    with which reward) in trial-number order: the advantage is the reward minus an exponential moving average of
    earlier rewards (the baseline), divided by a running estimate of its standard deviation (a bias-corrected
    moving average of the squared advantage, including this one), so the step does not depend on the reward's
    scale and its size is bounded by ``1 / sqrt(1 - baseline_decay)``. Each decision's logits move by
    ``learning_rate * (advantage * grad log p(choice) + entropy_weight * grad H)``, the entropy bonus keeping the
    policy from collapsing early. The first reward only sets the baseline. Enqueued trials teach like any other:
    their choices were not drawn from the policy, but the update still moves it towards choices whose reward
    beats the baseline.

    Works in any maximizing study whose parameters are categorical: with a ``space`` (a
    :class:`~search_spaces.space.SearchSpace` or :class:`~nas.controllers.CategoricalSpace`) its decisions are
    the policy's; without one, ``optuna.create_study(direction="maximize", sampler=PolicyGradientSampler(seed=0))``
    learns over the categorical parameters that every complete trial holds (see
    :class:`~nas.controllers.replay.ReplayedSampler`).

    Args:
        space: The decisions the policy emits; ``None`` to infer them from the study.
        learning_rate: Step size on the logits per reward (> 0).
        baseline_decay: Decay of the moving averages of the reward and of the squared advantage, in [0, 1).
        entropy_weight: Weight of the entropy bonus (>= 0).
        failed_reward: Reward taught by a FAIL trial that was not interrupted (finite).
        seed: Seed of the samples (an integer >= 0).
    """

    def __init__(
        self,
        space: DecisionSpace | None = None,
        *,
        learning_rate: float = 0.2,
        baseline_decay: float = 0.9,
        entropy_weight: float = 0.01,
        failed_reward: float = 0.0,
        seed: int = 0,
    ) -> None:
        check_real("learning_rate", learning_rate, 0, low_open=True)
        check_real("baseline_decay", baseline_decay, 0, 1, high_open=True)
        check_real("entropy_weight", entropy_weight, 0)
        super().__init__(space, failed_reward=failed_reward, seed=seed)
        self._learning_rate = float(learning_rate)
        self._baseline_decay = float(baseline_decay)
        self._entropy_weight = float(entropy_weight)

    def policy_probabilities(self) -> dict[str, dict[Any, float]]:
        """The probability of each choice of each decision, after the last update (empty before the first one
        when the decisions are inferred from the study)."""
        with self._lock:
            if self._replay is None:
                if self._space is None:
                    return {}
                decisions = [(decision.name, tuple(decision.choices)) for decision in self._space.decisions]
                logits = self._initial_state(self._space).logits
            else:
                decisions, logits = list(self._replay.decisions), self._replay.state.logits
            return {
                name: {choice: float(probability) for choice, probability in zip(choices, _softmax(decision_logits))}
                for (name, choices), decision_logits in zip(decisions, logits)
            }

    def _initial_state(self, space: DecisionSpace) -> _Policy:
        """The uniform policy before any reward."""
        return _Policy(logits=[np.zeros(len(decision.choices)) for decision in space.decisions])

    def _learn(self, policy: _Policy, indices: tuple[int, ...], reward: float) -> None:
        """Applies one reward's REINFORCE update."""
        policy.num_updates += 1
        if policy.num_updates == 1:
            policy.baseline = reward
            return
        decay = self._baseline_decay
        advantage = reward - policy.baseline
        policy.baseline = decay * policy.baseline + (1 - decay) * reward
        policy.advantage_square = decay * policy.advantage_square + (1 - decay) * advantage**2
        # Bias correction as in Adam: the squared-advantage average starts at 0 on the second reward.
        variance = policy.advantage_square / (1 - decay ** (policy.num_updates - 1))
        normalized_advantage = advantage / math.sqrt(variance) if variance > 0 else 0.0
        for logits, index in zip(policy.logits, indices):
            probabilities = _softmax(logits)
            log_probability_gradient = -probabilities
            log_probability_gradient[index] += 1.0
            log_probabilities = np.log(probabilities)
            entropy = -float(np.dot(probabilities, log_probabilities))
            entropy_gradient = -probabilities * (log_probabilities + entropy)
            logits += self._learning_rate * (
                normalized_advantage * log_probability_gradient + self._entropy_weight * entropy_gradient
            )

    def _draw(self, policy: _Policy, space: DecisionSpace, generator: np.random.Generator) -> tuple[int, ...]:
        """Each decision drawn from its softmax, in the space's order."""
        return tuple(int(generator.choice(len(logits), p=_softmax(logits))) for logits in policy.logits)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()
