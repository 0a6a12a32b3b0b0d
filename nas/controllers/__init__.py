"""Controllers of the search, as Optuna samplers (DESIGN.md, section 2), picked by name.

``random`` is Optuna's RandomSampler, the baseline every search must beat; ``rl`` is the MnasNet-style policy
gradient controller of EfficientNetV2's search (:mod:`nas.controllers.rl`); ``tpe`` is Optuna's multivariate
TPE, a sample-efficient model-based alternative that comes for free. The campaign asks every controller for a
trial the same way: ``study.ask(fixed_distributions=distributions(space))``.

Every controller runs inside :class:`DistinctSampler` (:mod:`nas.controllers.distinct`): its draws are seeded by
``(seed, trial.number)``, so a resumed study does not replay its first trials, and it never proposes an
architecture the study already holds until :func:`space_exhausted` says every one is taken.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from optuna.samplers import BaseSampler, RandomSampler, TPESampler

from nas.controllers.distinct import (
    DistinctSampler,
    OptunaProposer,
    Proposer,
    space_exhausted,
    taken_architectures,
)
from nas.controllers.params import choice_indices, distributions
from nas.controllers.rl import PolicyGradientSampler
from search_spaces.checks import check_choice
from search_spaces.space import SearchSpace

__all__ = [
    "CONTROLLERS",
    "DistinctSampler",
    "OptunaProposer",
    "PolicyGradientSampler",
    "choice_indices",
    "distributions",
    "make_sampler",
    "space_exhausted",
    "taken_architectures",
]

CONTROLLERS = ("random", "rl", "tpe")

# TPE: multivariate (the decisions interact, e.g. a stage's op and expansion ratio), one joint group since every
# trial asks for every decision, and Optuna's default 10 random trials before the model takes over.
_TPE_DEFAULTS = {"multivariate": True, "group": False, "n_startup_trials": 10}


def make_sampler(name: str, space: SearchSpace, *, seed: int = 0, **options: Any) -> DistinctSampler:
    """The controller called ``name`` (one of :data:`CONTROLLERS`) over ``space``, seeded with ``seed``.

    ``options`` are keyword arguments of the controller's constructor: those of :class:`PolicyGradientSampler`
    for ``rl`` (``learning_rate``, ...), of Optuna's ``TPESampler`` for ``tpe`` (overriding the defaults above;
    not ``constraints_func``, whose bookkeeping needs one sampler object for the whole study: the campaign
    applies its constraints itself); ``random`` takes none. The controller is wrapped in a
    :class:`DistinctSampler`, whose ``proposer`` it is.
    """
    check_choice("controller", name, CONTROLLERS)
    if name == "random":
        _check_options(name, RandomSampler, options)
        proposer: Proposer = OptunaProposer(RandomSampler)
    elif name == "tpe":
        _check_options(name, TPESampler, options, refused=("seed", "constraints_func"))
        proposer = OptunaProposer(TPESampler, **{**_TPE_DEFAULTS, **options})
    else:  # rl
        _check_options(name, PolicyGradientSampler, options)
        proposer = PolicyGradientSampler(space, seed=seed, **options)
    return DistinctSampler(space, proposer, seed=seed)


def _check_options(
    name: str, constructor: Callable[..., BaseSampler], options: dict[str, Any], *, refused: tuple[str, ...] = ("seed",)
) -> None:
    """Raises ValueError naming the options ``constructor`` does not take (or that are ``refused``), and those
    it takes."""
    allowed = [
        parameter.name
        for parameter in inspect.signature(constructor).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name not in refused
    ]
    unknown = sorted(option for option in options if option not in allowed)
    if unknown:
        raise ValueError(f"controller {name!r}: unknown option(s) {unknown}; allowed options are {allowed}")
