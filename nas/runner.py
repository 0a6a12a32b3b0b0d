"""Ray Tune execution of a campaign: the only module that imports Ray.

Tune runs the trials; a thin :class:`StudySearcher` asks the Optuna study for each trial and tells it the result
(ask/tell), so the study stays the single source of truth and Tune's own state is disposable. The dataset is put
in Ray's object store once per campaign and cached in each worker process, which Tune reuses between trials.
The baseline trial runs first and alone: every reward is normalized by its step time and parameters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import optuna

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the study is the record; no Tune CSV/JSON logs
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import ray  # noqa: E402  (Tune reads the variables above when it is imported)
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from nas import study as studies
from nas.campaign import CampaignConfig
from nas.controllers import distributions, make_sampler
from nas.data import ImageData, load_data
from nas.train import EvalResult, EpochStats, TrainConfig, train_and_evaluate
from search_spaces import presets
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec

RESULT_KEY = "eval_result_json"
NODE_KEY = "ray_node_id"

Trainer = Callable[[ArchSpec, ImageData, TrainConfig], EvalResult]
"""What a worker calls to evaluate a candidate: :func:`nas.train.train_and_evaluate`, or a replacement with the
same contract (it returns a failed EvalResult rather than raising). It travels to the workers by pickling."""


@dataclass(frozen=True)
class CampaignOutcome:
    """How a ``run_campaign`` call ended: finished trials in the study, the budget and the best trial."""

    study_name: str
    storage: str
    finished: int
    budget: int
    ran: int
    best_trial: int | None
    best_reward: float | None
    recovered: tuple[int, ...]


def run_campaign(
    config: CampaignConfig, *, out: TextIO = sys.stdout, trainer: Trainer = train_and_evaluate
) -> CampaignOutcome:
    """Runs (or resumes) the campaign until the study holds ``config.trials`` finished trials.

    The driver holds the study's :class:`~nas.study.DriverLock` throughout: a second driver on the same study is
    refused with a message naming the first, so trials are never numbered, counted or re-enqueued by two.
    """
    space = presets.get_space(config.space)
    storage = studies.make_storage(config.storage_url)
    with studies.DriverLock(storage, config.study) as lock:
        return _run_locked(config, space, storage, lock, out, trainer)


def _run_locked(
    config: CampaignConfig,
    space: SearchSpace,
    storage: optuna.storages.BaseStorage,
    lock: studies.DriverLock,
    out: TextIO,
    trainer: Trainer,
) -> CampaignOutcome:
    sampler = make_sampler(config.controller, space, seed=config.seed)
    study = studies.open_study(config, space, sampler, storage=storage)
    recovered = tuple(studies.recover_interrupted(study))
    if recovered:
        print(f"recovered interrupted trial(s) {list(recovered)}: marked FAIL (interrupted) and enqueued again", file=out)
    finished = len(studies.finished_trials(study))
    if finished >= config.trials:
        print(f"study {config.study!r} already has {finished} finished trials (budget {config.trials}); "
              "nothing to do", file=out)
        return _outcome(config, study, ran=0, recovered=recovered)
    _enqueue_baseline_if_needed(study, space)
    data = load_data(config.data, image_size=config.train.image_size, val_fraction=config.val_fraction,
                     seed=config.seed)
    print(f"campaign {config.study!r}: space {space.name} ({space.size:,} architectures), {data.name}, "
          f"{config.controller} controller, {finished}/{config.trials} trials finished, "
          f"storage {config.storage_url}", file=out, flush=True)
    searcher = StudySearcher(study, space, config, out=out, lock=lock)
    try:
        _run_tune(config, data, searcher, trainer)
    finally:
        searcher.interrupt_pending("campaign stopped")
    if searcher.baseline_failure is not None:
        raise studies.StudyError(f"the baseline failed, so no reward can be computed: {searcher.baseline_failure}")
    return _outcome(config, study, ran=searcher.completed, recovered=recovered)


def _outcome(config: CampaignConfig, study: optuna.Study, *, ran: int, recovered: tuple[int, ...]) -> CampaignOutcome:
    best = studies.best_trials(study, 1)
    return CampaignOutcome(
        study_name=config.study,
        storage=config.storage_url,
        finished=len(studies.finished_trials(study)),
        budget=config.trials,
        ran=ran,
        best_trial=best[0].number if best else None,
        best_reward=best[0].value if best else None,
        recovered=recovered,
    )


def _enqueue_baseline_if_needed(study: optuna.Study, space: SearchSpace) -> None:
    """Puts the baseline first in line unless it has completed or already waits (enqueued by a previous run)."""
    if studies.baseline(study) is not None:
        return
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if any(trial.user_attrs.get("role") == studies.ROLE_BASELINE for trial in waiting):
        return
    study.enqueue_trial(space.to_params(space.baseline), user_attrs={"role": studies.ROLE_BASELINE})


class StudySearcher(Searcher):
    """Ray Tune ``Searcher`` that asks the study for trials and tells it their results.

    It keeps at most ``budget - finished`` trials in flight, holds every candidate back until the baseline is
    measured, and ends the run (``FINISHED``) when the budget is met and nothing is in flight. A trial whose
    worker died is an interrupted failure: its params are enqueued once more and it does not count. If the
    driver lock is lost, it starts nothing new.
    """

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        config: CampaignConfig,
        *,
        out: TextIO,
        lock: studies.DriverLock | None = None,
    ) -> None:
        super().__init__(metric=None, mode=None)
        self.study = study
        self.space = space
        self.config = config
        self.out = out
        self.pending: dict[str, tuple[optuna.trial.Trial, ArchSpec]] = {}
        self.finished = len(studies.finished_trials(study))
        self.completed = 0
        self.baseline_failure: str | None = None
        self.distributions = distributions(space)
        self.lock = lock
        best = studies.best_trials(study, 1)
        # (reward, trial number) of the best complete trial, kept up to date here rather than re-read per trial
        self.best: tuple[float, int] | None = (best[0].value, best[0].number) if best else None

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its searcher into its own experiment state, which is never restored here (the study is
        the record); the driver lock, which holds a heartbeat thread, stays out of that copy."""
        return {key: value for key, value in self.__dict__.items() if key != "lock"} | {"lock": None}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict | None:
        if self.baseline_failure is not None or (self.lock is not None and self.lock.lost):
            return Searcher.FINISHED if not self.pending else None
        if self.finished + len(self.pending) >= self.config.trials:
            return Searcher.FINISHED if not self.pending else None
        if studies.baseline(self.study) is None and self.pending:
            return None  # candidates wait for the baseline's S and P
        trial = self.study.ask(fixed_distributions=self.distributions)
        spec = self.space.from_params(trial.params)
        if studies.baseline(self.study) is None:
            trial.set_user_attr("role", studies.ROLE_BASELINE)
            spec = dataclasses.replace(spec, name=self.space.baseline.name)
        else:
            trial.set_user_attr("role", trial.user_attrs.get("role", studies.ROLE_CANDIDATE))
        trial.set_user_attr("spec", spec.to_dict())
        trial.set_user_attr("block_strings", list(spec.block_strings))
        trial.set_user_attr("controller", self.config.controller)
        self.pending[trial_id] = (trial, spec)
        return {"trial_number": trial.number, "spec": spec.to_dict()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.pending:
            return
        trial, spec = self.pending.pop(trial_id)
        if error or result is None or RESULT_KEY not in result:
            frozen = self.study.get_trials(deepcopy=False)[trial.number]
            studies.mark_interrupted(self.study, frozen, reason="the trial's worker failed")
            print(f"trial {trial.number}: worker failed; enqueued again", file=self.out, flush=True)
            return
        evaluation = _eval_result_from_json(result[RESULT_KEY])
        if NODE_KEY in result:
            trial.set_user_attr("ray_node", result[NODE_KEY])
        reward = studies.record_result(self.study, trial, spec, evaluation, self.config)
        self.finished += 1
        self.completed += 1
        if reward is not None and (self.best is None or reward > self.best[0]):
            self.best = (reward, trial.number)
        if trial.user_attrs.get("role") == studies.ROLE_BASELINE and not evaluation.ok:
            self.baseline_failure = evaluation.failure_reason
        self._report(trial.number, spec, evaluation, reward)

    def interrupt_pending(self, reason: str) -> None:
        """Ends trials still in flight as interrupted failures (their params are enqueued for the next run)."""
        trials = self.study.get_trials(deepcopy=False)
        for trial, _ in self.pending.values():
            if trials[trial.number].state == optuna.trial.TrialState.RUNNING:
                studies.mark_interrupted(self.study, trials[trial.number], reason=reason)
        self.pending.clear()

    def _report(self, number: int, spec: ArchSpec, result: EvalResult, reward: float | None) -> None:
        best_text = f"best {self.best[0]:.4f} (#{self.best[1]})" if self.best is not None else "best -"
        width = len(str(self.config.trials))
        head = f"[{self.finished:>{width}}/{self.config.trials}] trial {number:>3}"
        if reward is None:
            body = f"FAILED {result.failure_reason}"
        else:
            body = (f"A {result.accuracy:.4f}  S {result.step_time * 1e3:7.2f} ms  P {result.parameters:>10,}  "
                    f"reward {reward:.4f}")
        print(f"{head}  {body}  {best_text}  {' '.join(spec.block_strings)}", file=self.out, flush=True)


def _eval_result_from_json(text: str) -> EvalResult:
    data = json.loads(text)
    data["history"] = tuple(EpochStats(**epoch) for epoch in data.get("history", ()))
    return EvalResult(**data)


_WORKER_DATA: dict[str, ImageData] = {}


def evaluate_trial(
    config: dict[str, Any], *, data: ImageData, train: TrainConfig, cpus: int, trainer: Trainer = train_and_evaluate
) -> None:
    """Tune trainable: proxy-trains one candidate in a worker and reports its EvalResult as JSON, with the id of
    the Ray node it ran on.

    The worker keeps the dataset (and its copy on the device) between trials, so a reused worker fetches it
    once; the trial uses its GPU when Ray assigned one, else ``cpus`` CPU threads.
    """
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    key = f"{data.name}:{device}"
    if key not in _WORKER_DATA:
        _WORKER_DATA.clear()
        _WORKER_DATA[key] = data.to(device)
    spec = ArchSpec.from_dict(config["spec"])
    result = trainer(spec, _WORKER_DATA[key], dataclasses.replace(train, device=device, threads=cpus))
    tune.report({RESULT_KEY: json.dumps(result.to_dict()), NODE_KEY: ray.get_runtime_context().get_node_id()})


def _run_tune(config: CampaignConfig, data: ImageData, searcher: Any, trainer: Trainer) -> None:
    if not ray.is_initialized():
        ray.init(
            address=config.address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=True,
            logging_level=logging.ERROR,
        )
    gpus = config.gpus_per_trial
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    trainable = tune.with_resources(
        tune.with_parameters(
            evaluate_trial, data=data, train=config.train, cpus=config.cpus_per_trial, trainer=trainer
        ),
        {"cpu": config.cpus_per_trial, "gpu": gpus},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1, max_concurrent_trials=config.workers, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name=f"{config.study}-{int(time.time())}",
            storage_path=str(Path("runs", "ray").resolve()),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    tuner.fit()
