"""Controllers of the search, as Optuna samplers (DESIGN.md, section 2), picked by name.

``random`` is Optuna's RandomSampler, the baseline every search must beat; ``rl`` is the MnasNet-style policy
gradient controller of EfficientNetV2's search (:mod:`nas.controllers.rl`); ``tpe`` is Optuna's multivariate
TPE, a sample-efficient model-based alternative that comes for free. The campaign asks every controller for a
trial the same way: ``study.ask(fixed_distributions=distributions(space))``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from optuna.samplers import BaseSampler, RandomSampler, TPESampler

from nas.controllers.params import choice_indices, distributions
from nas.controllers.rl import PolicyGradientSampler
from search_spaces.space import SearchSpace

__all__ = ["CONTROLLERS", "PolicyGradientSampler", "choice_indices", "distributions", "make_sampler"]

CONTROLLERS = ("random", "rl", "tpe")

# TPE: multivariate (the decisions interact, e.g. a stage's op and expansion ratio), one joint group since every
# trial asks for every decision, and Optuna's default 10 random trials before the model takes over.
_TPE_DEFAULTS = {"multivariate": True, "group": False, "n_startup_trials": 10}


def make_sampler(name: str, space: SearchSpace, *, seed: int = 0, **options: Any) -> BaseSampler:
    """The controller called ``name`` (one of :data:`CONTROLLERS`) over ``space``, seeded with ``seed``.

    ``options`` are keyword arguments of the controller's constructor: those of :class:`PolicyGradientSampler`
    for ``rl`` (``learning_rate``, ...), of Optuna's ``TPESampler`` for ``tpe`` (overriding the defaults above);
    ``random`` takes none.
    """
    if name == "random":
        _check_options(name, RandomSampler, options)
        return RandomSampler(seed=seed)
    if name == "tpe":
        _check_options(name, TPESampler, options)
        return TPESampler(seed=seed, **{**_TPE_DEFAULTS, **options})
    if name == "rl":
        _check_options(name, PolicyGradientSampler, options)
        return PolicyGradientSampler(space, seed=seed, **options)
    raise ValueError(f"controller must be one of {CONTROLLERS}, got {name!r}")


def _check_options(name: str, constructor: Callable[..., BaseSampler], options: dict[str, Any]) -> None:
    """Raises ValueError naming the options ``constructor`` does not take, and those it takes."""
    allowed = [
        parameter.name
        for parameter in inspect.signature(constructor).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name != "seed"
    ]
    unknown = sorted(option for option in options if option not in allowed)
    if unknown:
        raise ValueError(f"controller {name!r}: unknown option(s) {unknown}; allowed options are {allowed}")
