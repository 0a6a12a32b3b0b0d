"""Controllers of the search, as Optuna samplers (DESIGN.md, section 2), picked by name.

``random`` is Optuna's RandomSampler, the baseline every search must beat; ``rl`` is the MnasNet-style policy
gradient controller of EfficientNetV2's search (:mod:`nas.controllers.rl`); ``evolution`` is regularized
evolution (Real et al., 2019; :mod:`nas.controllers.evolution`); ``tpe`` is Optuna's multivariate TPE, a
sample-efficient model-based alternative that comes for free. The campaign asks every controller for a trial the
same way: ``study.ask(fixed_distributions=distributions(space))``.

Every controller works in a plain Optuna study whose parameters are categorical, too: ``make_sampler(name)``
without a space, or ``PolicyGradientSampler(seed=0)`` and ``RegularizedEvolutionSampler(seed=0)`` directly. Its
draws are seeded by ``(seed, trial.number)``, so a study resumed in a new process gets the proposals the first
process would have made, and the RL and evolution controllers' state is rebuilt from the study's finished trials
(:mod:`nas.controllers.replay`).

With a space, every controller runs inside :class:`DistinctSampler` (:mod:`nas.controllers.distinct`): it never
proposes an architecture the study already holds until :func:`space_exhausted` says every one is taken.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from optuna.samplers import BaseSampler, RandomSampler, TPESampler

from nas.controller_names import CONTROLLERS  # the names live in a module without Optuna, for the CLI's parser
from nas.controllers.distinct import DistinctSampler, Proposer, space_exhausted, taken_architectures
from nas.controllers.evolution import RegularizedEvolutionSampler
from nas.controllers.optuna_samplers import OptunaProposer, TrialSeededSampler
from nas.controllers.params import (
    CategoricalDecision,
    CategoricalSpace,
    DecisionSpace,
    choice_indices,
    distributions,
    inferred_space,
)
from nas.controllers.rl import PolicyGradientSampler
from search_spaces.checks import check_choice

__all__ = [
    "CONTROLLERS",
    "CategoricalDecision",
    "CategoricalSpace",
    "DecisionSpace",
    "DistinctSampler",
    "OptunaProposer",
    "PolicyGradientSampler",
    "RegularizedEvolutionSampler",
    "TrialSeededSampler",
    "choice_indices",
    "distributions",
    "inferred_space",
    "make_sampler",
    "space_exhausted",
    "taken_architectures",
]

# TPE: multivariate (the decisions interact, e.g. a stage's op and expansion ratio), one joint group since every
# trial asks for every decision, and Optuna's default 10 random trials before the model takes over.
_TPE_DEFAULTS = {"multivariate": True, "group": False, "n_startup_trials": 10}


def make_sampler(
    name: str, space: DecisionSpace | None = None, *, seed: int = 0, budget: int | None = None, **options: Any
) -> BaseSampler:
    """The controller called ``name`` (one of :data:`CONTROLLERS`), seeded with ``seed``.

    With a ``space`` (a :class:`~search_spaces.space.SearchSpace` or a :class:`CategoricalSpace`), the controller
    proposes its decisions and runs in a :class:`DistinctSampler`, whose ``proposer`` it is: what a campaign
    uses. Without one, it is a plain Optuna sampler for any study with categorical parameters.

    ``budget`` is the number of trials the search will run; the ``evolution`` controller scales its population to
    it (:func:`~nas.controllers.evolution.population_sizes`), the others do not need it. ``options`` are keyword
    arguments of the controller's constructor: those of :class:`PolicyGradientSampler` for ``rl``
    (``learning_rate``, ...), of :class:`RegularizedEvolutionSampler` for ``evolution`` (``population_size``,
    ...), of Optuna's ``TPESampler`` for ``tpe`` (overriding the defaults above; not ``constraints_func``, whose
    bookkeeping needs one sampler object for the whole study: the campaign applies its constraints itself);
    ``random`` takes none.
    """
    check_choice("controller", name, CONTROLLERS)
    if name == "random":
        _check_options(name, RandomSampler, options)
        proposer: Proposer = OptunaProposer(RandomSampler)
    elif name == "tpe":
        _check_options(name, TPESampler, options, refused=("seed", "constraints_func"))
        proposer = OptunaProposer(TPESampler, **{**_TPE_DEFAULTS, **options})
    elif name == "rl":
        _check_options(name, PolicyGradientSampler, options)
        proposer = PolicyGradientSampler(space, seed=seed, **options)
    else:  # evolution
        _check_options(name, RegularizedEvolutionSampler, options, refused=("seed", "budget"))
        proposer = RegularizedEvolutionSampler(space, seed=seed, budget=budget, **options)
    if space is not None:
        return DistinctSampler(space, proposer, seed=seed)
    if isinstance(proposer, OptunaProposer):
        return TrialSeededSampler(proposer, seed=seed)
    return proposer


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
