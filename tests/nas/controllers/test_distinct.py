"""No controller proposes an architecture twice, across processes: issue 11, point 2 ("resume repeats architectures").

Real Optuna studies with a stand-in reward, for every controller. A resumed process is a new sampler object on
the same storage: the sampler keeps nothing else. The storage is in memory (a committed SQLite write costs ~17 ms
here, 24 of them per trial of the large space) except for the interrupted run, which is on SQLite in ``tmp_path``.
"""

import logging
import zlib

import optuna
import pytest
from optuna.trial import TrialState

from nas.controllers import (
    CONTROLLERS,
    DistinctSampler,
    choice_indices,
    distributions,
    make_sampler,
    space_exhausted,
    taken_architectures,
)
from search_spaces import presets
from search_spaces.space import SearchSpace

pytestmark = pytest.mark.usefixtures("quiet_optuna")

# Four stages of the tiny backbone; every decision has one choice (the backbone's) except those listed.
_TINY_STAGES = (
    {"op": ["fused_mbconv"], "num_layers": [1], "kernel_size": [3], "expand_ratio": [1]},
    {"op": ["fused_mbconv"], "num_layers": [2], "kernel_size": [3], "expand_ratio": [4]},
    {"op": ["mbconv"], "num_layers": [2], "kernel_size": [3], "expand_ratio": [4]},
    {"op": ["mbconv"], "num_layers": [2], "kernel_size": [3], "expand_ratio": [6]},
)


def tiny_space(name: str, **choices: list) -> SearchSpace:
    """The tiny backbone with one choice per decision but ``choices`` (keyed ``stage1_op`` and so on)."""
    stages = [dict(stage) for stage in _TINY_STAGES]
    for key, values in choices.items():
        stage, field = key.split("_", 1)
        stages[int(stage.removeprefix("stage")) - 1][field] = values
    return SearchSpace.from_dict({"name": name, "backbone": presets.get("tiny").to_dict(), "stages": stages})


#: 2 x 2 x 2 = 8 architectures.
EIGHT = tiny_space("eight", stage1_op=["fused_mbconv", "mbconv"], stage1_kernel_size=[3, 5], stage2_num_layers=[1, 2])
#: 8 x 3 = 24 architectures.
TWENTY_FOUR = tiny_space(
    "twenty-four",
    stage1_op=["fused_mbconv", "mbconv"],
    stage1_kernel_size=[3, 5],
    stage2_num_layers=[1, 2],
    stage3_expand_ratio=[1, 4, 6],
)
LARGE = presets.get_space("efficientnetv2-s")


def reward(params: dict) -> float:
    """A deterministic stand-in for a proxy training's reward: any fixed function of the architecture."""
    return zlib.crc32(repr(sorted(params.items())).encode()) / 2**32


def run_trials(study: optuna.Study, space: SearchSpace, count: int) -> None:
    """Asks ``count`` trials the campaign's way and tells each its reward."""
    for _ in range(count):
        trial = study.ask(fixed_distributions=distributions(space))
        study.tell(trial, reward(trial.params))


def open_study(
    name: str, space: SearchSpace, storage: str | optuna.storages.BaseStorage | None = None, *, seed: int = 0
) -> optuna.Study:
    """The study on ``storage`` with a new sampler object, as a (re)started campaign process opens it."""
    return optuna.create_study(
        study_name="nas",
        storage=storage,
        direction="maximize",
        sampler=make_sampler(name, space, seed=seed),
        load_if_exists=True,
    )


def architectures(study: optuna.Study) -> list[tuple]:
    return [tuple(trial.params.values()) for trial in study.get_trials(deepcopy=False)]


# --- (a) a resumed study never repeats an architecture, and (b) params depend on the study and the number ------


@pytest.mark.parametrize("name", CONTROLLERS)
@pytest.mark.parametrize(("space", "first", "more"), [(TWENTY_FOUR, 8, 16), (LARGE, 12, 12)], ids=["24", "large"])
def test_a_resumed_study_never_repeats_an_architecture(name, space, first, more):
    storage = optuna.storages.InMemoryStorage()
    run_trials(open_study(name, space, storage), space, first)
    resumed = open_study(name, space, storage)  # a new process: a new sampler, the same seed and database
    run_trials(resumed, space, more)
    held = architectures(resumed)
    assert len(held) == first + more
    assert len(set(held)) == len(held)
    assert space_exhausted(resumed, space) == (space is TWENTY_FOUR)


@pytest.mark.parametrize("name", CONTROLLERS)
def test_a_resumed_study_gets_the_params_of_an_uninterrupted_one(name):
    uninterrupted = open_study(name, LARGE)
    run_trials(uninterrupted, LARGE, 24)  # past TPE's 10 start-up trials, so its model draws too
    storage = optuna.storages.InMemoryStorage()
    run_trials(open_study(name, LARGE, storage), LARGE, 10)
    for _ in range(2):
        run_trials(open_study(name, LARGE, storage), LARGE, 7)
    assert architectures(open_study(name, LARGE, storage)) == architectures(uninterrupted)


@pytest.mark.parametrize("name", CONTROLLERS)
def test_the_same_trial_number_gets_the_same_params_from_fresh_samplers(name):
    source = open_study(name, LARGE)
    run_trials(source, LARGE, 15)

    def next_params(seed: int) -> dict:
        study = open_study(name, LARGE, seed=seed)
        for trial in source.get_trials():
            study.add_trial(trial)
        return study.ask(fixed_distributions=distributions(LARGE)).params

    assert next_params(0) == next_params(0)
    assert next_params(0) != next_params(1)


# --- (c) a tiny space is exhausted exactly -------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONTROLLERS)
def test_a_tiny_space_is_exhausted_exactly(name, caplog):
    study = open_study(name, EIGHT)
    for _ in range(EIGHT.size):
        assert not space_exhausted(study, EIGHT)
        run_trials(study, EIGHT, 1)
    assert len(set(architectures(study))) == EIGHT.size == 8
    assert space_exhausted(study, EIGHT)
    with caplog.at_level(logging.WARNING, logger="nas.controllers.distinct"):
        repeat = study.ask(fixed_distributions=distributions(EIGHT))
    assert "trial 8: every architecture of the space 'eight' that the trial may take is already in the study" in (
        caplog.text
    )
    EIGHT.from_params(repeat.params)


@pytest.mark.parametrize("name", CONTROLLERS)
def test_partly_enqueued_params_get_free_decisions_that_make_an_untaken_architecture(name):
    study = open_study(name, EIGHT)
    run_trials(study, EIGHT, 5)
    op = min(("fused_mbconv", "mbconv"), key=lambda op: [held[0] for held in architectures(study)].count(op))
    study.enqueue_trial({"stage1.op": op})  # at least 1 of its 4 architectures is untaken
    run_trials(study, EIGHT, 1)
    assert architectures(study)[-1][0] == op
    assert len(set(architectures(study))) == 6


class Stuck:
    """A controller that proposes its space's backbone whatever the seed, so every redraw after the first repeats."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def propose(self, study, trial, search_space, *, seed):
        return self.space.to_params(self.space.baseline)


def test_the_uniform_draw_among_untaken_architectures_is_exact_in_tiny_and_huge_spaces(caplog):
    tiny = optuna.create_study(direction="maximize", sampler=DistinctSampler(EIGHT, Stuck(EIGHT), seed=3))
    for _ in range(4):  # the 4 fused_mbconv architectures, then none is left for the enqueued op
        tiny.enqueue_trial({"stage1.op": "fused_mbconv"})
        run_trials(tiny, EIGHT, 1)
    assert architectures(tiny)[0] == tuple(EIGHT.to_params(EIGHT.baseline).values())
    assert len(set(architectures(tiny))) == 4 and {held[0] for held in architectures(tiny)} == {"fused_mbconv"}
    tiny.enqueue_trial({"stage1.op": "fused_mbconv"})
    with caplog.at_level(logging.WARNING, logger="nas.controllers.distinct"):
        run_trials(tiny, EIGHT, 1)
    assert "proposing a repeat" in caplog.text and architectures(tiny)[-1] == architectures(tiny)[0]
    run_trials(tiny, EIGHT, 4)
    assert len(set(architectures(tiny))) == 8

    backbone = presets.get("efficientnet-b0")
    huge_space = SearchSpace.from_dict(
        {
            "name": "huge",
            "backbone": backbone.to_dict(),
            "stages": [{"num_layers": {"min": 1, "max": 100}} for _ in backbone.stages],
        }
    )
    assert huge_space.size > 10**21
    huge = optuna.create_study(direction="maximize", sampler=DistinctSampler(huge_space, Stuck(huge_space)))
    run_trials(huge, huge_space, 5)
    assert len(set(architectures(huge))) == 5


# --- (d) enqueued trials keep their params; an interrupted architecture runs exactly once more -----------------


@pytest.mark.parametrize("name", CONTROLLERS)
def test_enqueued_params_of_a_finished_trial_are_asked_exactly(name):
    study = open_study(name, TWENTY_FOUR)
    run_trials(study, TWENTY_FOUR, 12)
    finished = study.trials[3].params
    study.enqueue_trial(finished)
    assert study.ask(fixed_distributions=distributions(TWENTY_FOUR)).params == finished


@pytest.mark.parametrize("name", CONTROLLERS)
def test_an_interrupted_architecture_runs_exactly_once_more(tmp_path, name):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(name, EIGHT, storage)
    run_trials(study, EIGHT, 3)
    killed = study.ask(fixed_distributions=distributions(EIGHT))  # the driver dies while it trains

    resumed = open_study(name, EIGHT, storage)
    killed.set_user_attr("interrupted", True)  # what the campaign's recovery marks, in the new process
    resumed.tell(killed.number, state=TrialState.FAIL)
    run_trials(resumed, EIGHT, 1)  # a controller trial before the re-run is enqueued does not take it
    resumed.enqueue_trial(killed.params, user_attrs={"requeued_from": killed.number})
    rerun = resumed.ask(fixed_distributions=distributions(EIGHT))
    assert rerun.params == killed.params and rerun.user_attrs["requeued_from"] == killed.number
    resumed.tell(rerun, reward(rerun.params))
    while not space_exhausted(resumed, EIGHT):
        run_trials(resumed, EIGHT, 1)

    held = architectures(resumed)
    assert held.count(tuple(killed.params.values())) == 2  # the interrupted FAIL and its one re-run
    assert len(held) == EIGHT.size + 1 and len(set(held)) == EIGHT.size


def test_taken_architectures_count_every_state_and_waiting_trials():
    study = optuna.create_study(direction="maximize", sampler=make_sampler("random", TWENTY_FOUR))
    run_trials(study, TWENTY_FOUR, 2)
    failed = study.ask(fixed_distributions=distributions(TWENTY_FOUR))
    study.tell(failed, state=TrialState.FAIL)
    interrupted = study.ask(fixed_distributions=distributions(TWENTY_FOUR))
    interrupted.set_user_attr("interrupted", True)
    study.tell(interrupted, state=TrialState.FAIL)
    study.ask(fixed_distributions=distributions(TWENTY_FOUR))  # running
    study.enqueue_trial(study.trials[0].params)  # waiting, the params of a complete trial
    study.enqueue_trial({"stage1.op": "mbconv"})  # waiting, part of an architecture: holds none
    held = [choice_indices(TWENTY_FOUR, trial.params) for trial in study.trials[:5]]
    assert taken_architectures(study, TWENTY_FOUR) == set(held) and len(set(held)) == 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attempts": 0}, "attempts must be an integer >= 1, got 0"),
        ({"attempts": True}, "attempts must be an integer >= 1, got True"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ],
)
def test_distinct_sampler_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        DistinctSampler(EIGHT, Stuck(EIGHT), **options)
