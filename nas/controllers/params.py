"""The flat decisions of a search space as Optuna distributions, and trial params read back as choice indices.

Every controller and the campaign must describe a decision with the *same* distribution: Optuna refuses a
parameter whose distribution changes within a trial, and a sampler's relative search space must match what the
campaign asks for. This module is that one description.
"""

from __future__ import annotations

from typing import Any, Mapping

from optuna.distributions import CategoricalDistribution

from search_spaces.space import SearchSpace


def distributions(space: SearchSpace) -> dict[str, CategoricalDistribution]:
    """One categorical distribution per decision, keyed by its flat name (``stage3.op``), choices in space order.

    The campaign asks for a trial with ``study.ask(fixed_distributions=distributions(space))``.
    """
    return {decision.name: CategoricalDistribution(decision.choices) for decision in space.decisions}


def choice_indices(space: SearchSpace, params: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The index of each decision's value among its choices, in the space's order; ``None`` if not a member.

    Membership follows :meth:`SearchSpace.from_params`: every decision present with one of its choices (a bool
    is never a choice, though ``True == 1``). Parameters outside the space's decisions are ignored.
    """
    indices = []
    for decision in space.decisions:
        if decision.name not in params:
            return None
        value = params[decision.name]
        if isinstance(value, bool) or value not in decision.choices:
            return None
        indices.append(decision.choices.index(value))
    return tuple(indices)
