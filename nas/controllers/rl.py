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
* The policy is a deterministic function of the study's finished trials, replayed in trial-number order, so a
  resumed campaign needs nothing but the database (DESIGN.md, section 2). With numpy only and a few dozen
  logits, replaying a thousand trials takes about 0.2 s on a CPU and gives the same policy in any process; no
  framework, device or optimizer state is involved.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nas import records
from nas.controllers.params import choice_indices, distributions
from nas.controllers.seeding import attempt_seed, sample_uniform
from nas.study import FINISHED_STATES
from search_spaces.checks import check_int, check_real
from search_spaces.space import SearchSpace


@dataclass
class _Policy:
    """Everything the controller has learned: logits per decision and the running reward statistics."""

    logits: list[np.ndarray]
    #: Trial numbers already replayed, in order (taught or skipped): the prefix the state is a function of.
    processed: list[int] = field(default_factory=list)
    #: Number of rewards taught so far.
    num_updates: int = 0
    #: Exponential moving average of the rewards (the REINFORCE baseline).
    baseline: float = 0.0
    #: Exponential moving average of the squared advantage (reward minus baseline), not bias-corrected.
    advantage_square: float = 0.0


class PolicyGradientSampler(BaseSampler):
    """REINFORCE over independent per-decision logits, rebuilt from the study's finished trials in order.

    Learning rule, applied once per finished trial in trial-number order: the advantage is the reward minus an
    exponential moving average of earlier rewards (the baseline), divided by a running estimate of its standard
    deviation (a bias-corrected moving average of the squared advantage, including this one), so the step does
    not depend on the reward's scale and its size is bounded by ``1 / sqrt(1 - baseline_decay)``. Each
    decision's logits move by ``learning_rate * (advantage * grad log p(choice) + entropy_weight * grad H)``,
    the entropy bonus keeping the policy from collapsing early. The first reward only sets the baseline.

    Which finished trials teach:

    * COMPLETE trials, with their value as the reward.
    * FAIL trials with the user attribute ``interrupted`` set are skipped: the driver died, the architecture is
      not to blame (the campaign re-enqueues their params).
    * Other FAIL trials (out of memory, non-finite loss, an exception) teach with reward ``failed_reward``
      (default 0.0, the lowest reward a candidate can get), so the controller learns to avoid what fails.
    * Trials whose params are not a member of the space (a decision missing or a value outside its choices)
      and COMPLETE trials with a non-finite value are skipped. Parameters outside the space's decisions are
      ignored. PRUNED, RUNNING and WAITING trials are not finished and do not count.

    Enqueued trials (the backbone architecture, re-enqueued params) teach like any other: their choices were
    not drawn from the policy, but the update still moves it towards choices whose reward beats the baseline.

    The policy depends on nothing but the study: on every :meth:`sample_relative` the finished trials are
    replayed in trial-number order from where the cached state stopped, or from scratch when they no longer
    extend it (a lower-numbered trial finished late, or a new process resumes the study). Samples are drawn
    with a generator seeded by ``(seed, trial.number)``, so a trial's params do not depend on the process;
    :meth:`propose` draws with any seed, for a wrapper that redraws (:class:`~nas.controllers.DistinctSampler`).

    Args:
        space: The search space whose decisions the policy emits.
        learning_rate: Step size on the logits per reward (> 0).
        baseline_decay: Decay of the moving averages of the reward and of the squared advantage, in [0, 1).
        entropy_weight: Weight of the entropy bonus (>= 0).
        failed_reward: Reward taught by a FAIL trial that was not interrupted (finite).
        seed: Seed of the samples (an integer >= 0).
    """

    def __init__(
        self,
        space: SearchSpace,
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
        check_real("failed_reward", failed_reward)
        check_int("seed", seed, 0)
        self._space = space
        self._decisions = space.decisions
        self._distributions = distributions(space)
        self._learning_rate = float(learning_rate)
        self._baseline_decay = float(baseline_decay)
        self._entropy_weight = float(entropy_weight)
        self._failed_reward = float(failed_reward)
        self._seed = seed
        self._policy = self._initial_policy()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without the lock (a lock cannot be pickled); the copy gets a fresh one."""
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """Every decision of the space: the campaign asks for exactly these distributions."""
        return dict(self._distributions)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Catches up with the study's finished trials, then draws every decision from the policy."""
        return self.propose(study, trial, search_space, seed=attempt_seed(self._seed, trial.number, 0))

    def propose(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution], *, seed: int
    ) -> dict[str, Any]:
        """The decisions of ``search_space`` drawn from the policy brought up to date, with a generator seeded by
        ``seed`` alone."""
        self.update(study)
        with self._lock:
            probabilities = [_softmax(logits) for logits in self._policy.logits]
        generator = np.random.default_rng(seed)
        params = {}
        for decision, decision_probabilities in zip(self._decisions, probabilities):
            # Draw every decision, even one outside ``search_space``, so each trial's stream is the same.
            index = int(generator.choice(len(decision.choices), p=decision_probabilities))
            if decision.name in search_space:
                params[decision.name] = decision.choices[index]
        return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """A parameter the policy does not cover is drawn uniformly, seeded by ``(seed, trial.number, its name)``."""
        return sample_uniform(study, trial, param_name, param_distribution, seed=self._seed)

    def update(self, study: Study) -> None:
        """Brings the policy up to date with the study's finished trials, replaying them in trial-number order.

        :meth:`sample_relative` calls it; call it directly to inspect a study's policy without sampling.
        """
        self._raise_error_if_multi_objective(study)
        if study.direction != StudyDirection.MAXIMIZE:
            raise ValueError(
                f"study direction must be {StudyDirection.MAXIMIZE.name} (the controller maximizes the reward), "
                f"got {study.direction.name}"
            )
        finished = sorted(study.get_trials(deepcopy=False, states=FINISHED_STATES), key=lambda trial: trial.number)
        with self._lock:
            processed = self._policy.processed
            if [trial.number for trial in finished[: len(processed)]] != processed:
                self._policy = self._initial_policy()
            for trial in finished[len(self._policy.processed) :]:
                self._learn(trial)
                self._policy.processed.append(trial.number)

    def policy_probabilities(self) -> dict[str, dict[Any, float]]:
        """The probability of each choice of each decision, after the last update."""
        with self._lock:
            return {
                decision.name: {
                    choice: float(probability)
                    for choice, probability in zip(decision.choices, _softmax(logits))
                }
                for decision, logits in zip(self._decisions, self._policy.logits)
            }

    def _initial_policy(self) -> _Policy:
        """The uniform policy before any reward."""
        return _Policy(logits=[np.zeros(len(decision.choices)) for decision in self._decisions])

    def _learn(self, trial: FrozenTrial) -> None:
        """Applies one trial's REINFORCE update, or nothing if the trial does not teach (see the class doc)."""
        reward = self._reward(trial)
        if reward is None:
            return
        indices = choice_indices(self._space, trial.params)
        if indices is None:
            return
        policy = self._policy
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

    def _reward(self, trial: FrozenTrial) -> float | None:
        """The reward a finished trial teaches, or ``None`` if it teaches nothing."""
        if trial.state == TrialState.FAIL:
            return None if trial.user_attrs.get(records.INTERRUPTED) else self._failed_reward
        value = trial.value
        return value if value is not None and math.isfinite(value) else None


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()
