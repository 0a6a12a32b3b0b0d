"""Seeds that depend only on the controller's seed and a trial's number, never on the process that draws.

A sampler seeded once per process replays the same stream when a campaign is resumed: trial 40 of the new run
got the params of trial 0 of the first (issue 11, point 2). Every draw of a controller is instead seeded from
``(seed, trial.number)`` and a *stream* that tells apart the draws of one trial (a redraw attempt, a parameter
outside the space), so a trial's params are a function of the study and its number alone.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial

# The kind of stream leads the entropy, so an attempt number and a parameter's hash never give the same seed.
_ATTEMPT_STREAM = 0
_PARAMETER_STREAM = 1


def attempt_seed(seed: int, trial_number: int, attempt: int) -> int:
    """The seed of draw number ``attempt`` (0 first) for trial ``trial_number``: a 32-bit integer.

    32 bits because Optuna's samplers hand the seed to ``numpy.random.RandomState``.
    """
    return _derived_seed(seed, trial_number, _ATTEMPT_STREAM, attempt)


def parameter_seed(seed: int, trial_number: int, name: str) -> int:
    """The seed of parameter ``name``'s own draw for trial ``trial_number``: a 32-bit integer."""
    return _derived_seed(seed, trial_number, _PARAMETER_STREAM, zlib.crc32(name.encode()))


def sample_uniform(study: Study, trial: FrozenTrial, name: str, distribution: BaseDistribution, *, seed: int) -> Any:
    """A uniform draw of parameter ``name`` for ``trial``, seeded by ``(seed, trial.number, name)``.

    For parameters outside a controller's space: each one gets its own stream, the same in any process.
    """
    return RandomSampler(seed=parameter_seed(seed, trial.number, name)).sample_independent(
        study, trial, name, distribution
    )


def _derived_seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
