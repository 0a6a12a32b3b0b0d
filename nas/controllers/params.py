"""The decisions a controller draws, as Optuna distributions, and trial params read back as choice indices.

Every controller and the campaign must describe a decision with the *same* distribution: Optuna refuses a
parameter whose distribution changes within a trial, and a sampler's relative search space must match what the
campaign asks for. This module is that one description.

A controller needs three things of a space: its ``name``, its ``decisions`` (each with a ``name`` and a tuple of
``choices``) and its ``size``. A :class:`~search_spaces.space.SearchSpace` has them; so has a
:class:`CategoricalSpace`, which describes any categorical study (NAS-Bench-201's six edges, a user's own
define-by-run objective) without a backbone, and which :func:`inferred_space` reads off a study's trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from optuna.distributions import CategoricalDistribution
from optuna.search_space import intersection_search_space
from optuna.study import Study
from optuna.trial import TrialState

from search_spaces.checks import check_string


class Decision(Protocol):
    """One categorical decision: a parameter name and its choices, in a fixed order."""

    @property
    def name(self) -> str: ...

    @property
    def choices(self) -> tuple: ...


class DecisionSpace(Protocol):
    """What a controller needs of a space: a :class:`~search_spaces.space.SearchSpace` or a
    :class:`CategoricalSpace`."""

    @property
    def name(self) -> str: ...

    @property
    def decisions(self) -> Sequence[Decision]: ...

    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class CategoricalDecision:
    """A decision of a :class:`CategoricalSpace`."""

    name: str
    choices: tuple


@dataclass(frozen=True)
class CategoricalSpace:
    """A space of independent categorical decisions, in the order given: any categorical study's architecture.

    ``CategoricalSpace.from_choices("nb201", {f"edge{i}": OPS for i in range(6)})`` describes NAS-Bench-201;
    :func:`~nas.controllers.make_sampler` accepts it where it accepts a search space.
    """

    name: str
    decisions: tuple[CategoricalDecision, ...]

    def __post_init__(self) -> None:
        check_string("name", self.name)
        names = [decision.name for decision in self.decisions]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"decision names must be unique, got {duplicates} more than once")
        for decision in self.decisions:
            if not decision.choices:
                raise ValueError(f"decision {decision.name!r}: choices must not be empty")

    @classmethod
    def from_choices(cls, name: str, choices: Mapping[str, Sequence[Any]]) -> CategoricalSpace:
        """The space whose decision ``key`` takes the values ``choices[key]``, in that order."""
        return cls(name, tuple(CategoricalDecision(key, tuple(values)) for key, values in choices.items()))

    @property
    def size(self) -> int:
        """Number of distinct architectures (combinations of choices)."""
        return math.prod(len(decision.choices) for decision in self.decisions)


#: The name of the space :func:`inferred_space` reads off a study.
INFERRED_SPACE_NAME = "inferred"


def inferred_space(study: Study) -> CategoricalSpace:
    """The categorical decisions every COMPLETE trial of ``study`` holds with one and the same distribution.

    Optuna's intersection search space, as its relative samplers (TPE, CMA-ES) infer it, restricted to categorical
    parameters and sorted by name: a function of the study alone. Empty before the first trial completes.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return CategoricalSpace(
        INFERRED_SPACE_NAME,
        tuple(
            CategoricalDecision(name, tuple(distribution.choices))
            for name, distribution in intersection_search_space(complete).items()
            if isinstance(distribution, CategoricalDistribution)
        ),
    )


def distributions(space: DecisionSpace) -> dict[str, CategoricalDistribution]:
    """One categorical distribution per decision, keyed by its name (``stage3.op``), choices in space order.

    The campaign asks for a trial with ``study.ask(fixed_distributions=distributions(space))``.
    """
    return {decision.name: CategoricalDistribution(decision.choices) for decision in space.decisions}


def choice_indices(space: DecisionSpace, params: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The index of each decision's value among its choices, in the space's order; ``None`` if not a member.

    Membership follows :meth:`SearchSpace.from_params`: every decision present with one of its choices, where a
    bool only matches a bool (``True == 1``, but ``True`` is not the choice ``1``). Parameters outside the space's
    decisions are ignored.
    """
    indices = []
    for decision in space.decisions:
        if decision.name not in params:
            return None
        index = _choice_index(decision.choices, params[decision.name])
        if index is None:
            return None
        indices.append(index)
    return tuple(indices)


def _choice_index(choices: tuple, value: Any) -> int | None:
    for index, choice in enumerate(choices):
        if isinstance(choice, bool) == isinstance(value, bool) and choice == value:
            return index
    return None
