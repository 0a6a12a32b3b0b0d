"""Ray Tune execution of a campaign: the only module that imports Ray.

Tune runs the trials; a thin :class:`StudySearcher` asks the Optuna study for each trial and tells it the result
(ask/tell), so the study stays the single source of truth and Tune's own state is disposable. The dataset is put
in Ray's object store once per campaign and cached in each worker process, which Tune reuses between trials.
The baseline trial runs first and alone: every reward is normalized by its step time and parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import optuna

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the study is the record; no Tune CSV/JSON logs
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import ray  # noqa: E402  (Tune reads the variables above when it is imported)
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from nas import study as studies
from nas.campaign import CampaignConfig
from nas.controllers import distributions, make_sampler, space_exhausted
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
    exhausted: bool = False  # every architecture of the space is in the study: stopped short of the budget


class Terminated(KeyboardInterrupt):
    """SIGTERM to the driver, handled as Ctrl-C is: trials in flight end as interrupted (each runs once more on
    resume), nothing is left RUNNING or WAITING, and the driver lock is released."""


class LockLostError(studies.StudyError):
    """The driver lost its study's lock mid-campaign; it stopped starting trials and let those in flight record."""


def run_campaign(
    config: CampaignConfig, *, out: TextIO = sys.stdout, trainer: Trainer = train_and_evaluate
) -> CampaignOutcome:
    """Runs (or resumes) the campaign until the study holds ``config.trials`` finished trials.

    The driver holds the study's :class:`~nas.study.DriverLock` throughout: a second driver on the same study is
    refused with a message naming the first, so trials are never numbered, counted or re-run twice. Raises
    :class:`Terminated` after a SIGTERM (as ``KeyboardInterrupt`` after Ctrl-C before Tune runs),
    :class:`LockLostError` when the lock was lost, and :class:`~nas.study.StudyError` for a storage that cannot
    be written (a read-only or damaged database, a full disk), always with the lock released where possible.
    """
    space = presets.get_space(config.space)
    storage = studies.make_storage(config.storage_url)
    lock = studies.DriverLock(storage, config.study)
    with _sigterm_as_interrupt() as stop, studies.storage_errors(config.storage_url, "write to"):
        lock.acquire()
        try:
            outcome = _run_locked(config, space, storage, lock, out, trainer, stop)
        except BaseException:
            with contextlib.suppress(studies.StudyError):  # the error under way says more (a full disk, say)
                lock.release()
            raise
        lock.release()
    if lock.lost:
        raise LockLostError(f"{lock.lost_reason}. This driver started no trial after that and recorded those in "
                            "flight; run the same command to resume once the storage is reachable")
    return outcome


def _run_locked(
    config: CampaignConfig,
    space: SearchSpace,
    storage: optuna.storages.BaseStorage,
    lock: studies.DriverLock,
    out: TextIO,
    trainer: Trainer,
    stop: _StopSignal,
) -> CampaignOutcome:
    sampler = make_sampler(config.controller, space, seed=config.seed)
    study = studies.open_study(config, space, sampler, storage=storage)
    recovered = tuple(studies.recover_interrupted(study))
    if recovered:
        print(f"recovered interrupted trial(s) {list(recovered)}: marked FAIL (interrupted); each runs once more",
              file=out)
    finished = len(studies.finished_trials(study))
    if finished >= config.trials:
        print(f"study {config.study!r} already has {finished} finished trials (budget {config.trials}); "
              "nothing to do", file=out)
        return _outcome(config, study, ran=0, recovered=recovered)
    data = load_data(config.data, image_size=config.train.image_size, val_fraction=config.val_fraction,
                     seed=config.seed)
    print(f"campaign {config.study!r}: space {space.name} ({space.size:,} architectures), {data.name}, "
          f"{config.controller} controller, {finished}/{config.trials} trials finished, "
          f"storage {studies.mask_url(config.storage_url)}", file=out, flush=True)
    searcher = StudySearcher(study, space, config, out=out, lock=lock)
    try:
        _run_tune(config, data, searcher, trainer, stop)
    finally:
        if searcher.storage_failure is None:
            searcher.interrupt_pending("campaign stopped")  # (a failed storage leaves them RUNNING: resume recovers)
    if searcher.storage_failure is not None:
        raise searcher.storage_failure
    if stop.received is not None:
        raise Terminated()
    if searcher.baseline_failure is not None:
        raise studies.StudyError(f"the baseline failed, so no reward can be computed: {searcher.baseline_failure}")
    return _outcome(config, study, ran=searcher.completed, recovered=recovered, exhausted=searcher.exhausted)


class _StopSignal:
    """SIGTERM as a graceful stop: inside Tune's run it asks Tune to stop (as its own Ctrl-C handler does);
    outside it raises :class:`Terminated` in the main thread. ``received`` is the signal's number once one came.

    Ray installs its own SIGTERM handler (``sys.exit`` mid-run, which ends in an abort of Ray's core) when the
    driver connects, so :meth:`install` runs again after ``ray.init``.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.tune_running = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = signum
        tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune's "end the run" handler, installed by fit()
        if self.tune_running and callable(tune_stop):
            if first:
                tune_stop(signum, frame)
        else:
            raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[_StopSignal]:
    """Handles SIGTERM with a :class:`_StopSignal` for the block, then restores the previous handler."""
    stop = _StopSignal()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    stop.install()
    try:
        yield stop
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _outcome(
    config: CampaignConfig, study: optuna.Study, *, ran: int, recovered: tuple[int, ...], exhausted: bool = False
) -> CampaignOutcome:
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
        exhausted=exhausted,
    )


class StudySearcher(Searcher):
    """Ray Tune ``Searcher`` that asks the study for trials and tells it their results.

    It keeps at most ``budget - finished`` trials in flight, holds every candidate back until the baseline is
    measured, and ends the run (``FINISHED``) when the budget is met and nothing is in flight. A trial whose
    worker died is an interrupted failure: it does not count and runs once more. If the driver lock is lost, the
    space is exhausted or the storage fails, it starts nothing new.
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
        self.exhausted = False
        trials = study.get_trials(deepcopy=False)
        self.trial_count = len(trials)  # trials in the study, kept up to date here rather than re-read per trial
        # WAITING trials an older version left in the study; Optuna's ask takes them first
        self.waiting = sum(trial.state == optuna.trial.TrialState.WAITING for trial in trials)
        self.storage_failure: Exception | None = None
        self.reruns = studies.pending_reruns(study)  # interrupted trials owed their one re-run, oldest first
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
        try:
            return self._suggest(trial_id)
        except studies.STORAGE_ERRORS as error:
            self._stop_on(error)
            return Searcher.FINISHED if not self.pending else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        try:
            self._complete(trial_id, result, error)
        except studies.STORAGE_ERRORS as storage_error:
            self._stop_on(storage_error)

    def _stop_on(self, error: Exception) -> None:
        """A storage that fails (a full disk, a database gone read-only) ends the campaign: nothing new starts and
        the error is raised once Tune has stopped, rather than inside Tune, which would only log it."""
        if self.storage_failure is None:
            self.storage_failure = error

    def _suggest(self, trial_id: str) -> dict | None:
        if self.storage_failure is not None:
            return Searcher.FINISHED if not self.pending else None
        if self.baseline_failure is not None or (self.lock is not None and self.lock.lost):
            return Searcher.FINISHED if not self.pending else None
        if self.finished + len(self.pending) >= self.config.trials:
            return Searcher.FINISHED if not self.pending else None
        measuring_baseline = studies.baseline(self.study) is None
        if measuring_baseline and self.pending:
            return None  # candidates wait for the baseline's S and P
        if not self._enqueue_fixed_trial(measuring_baseline) and self._space_exhausted():
            print(f"search space exhausted: all {self.space.size:,} architectures of {self.space.name!r} are in the "
                  f"study; stopping at {self.finished}/{self.config.trials} finished trials", file=self.out, flush=True)
            self.exhausted = True
            return Searcher.FINISHED if not self.pending else None
        trial = self.study.ask(fixed_distributions=self.distributions)
        self.trial_count += 1
        spec = self.space.from_params(trial.params)
        if measuring_baseline:
            trial.set_user_attr("role", studies.ROLE_BASELINE)
            spec = dataclasses.replace(spec, name=self.space.baseline.name)
        else:
            trial.set_user_attr("role", trial.user_attrs.get("role", studies.ROLE_CANDIDATE))
        trial.set_user_attr("spec", spec.to_dict())
        trial.set_user_attr("block_strings", list(spec.block_strings))
        trial.set_user_attr("controller", self.config.controller)
        self.pending[trial_id] = (trial, spec)
        return {"trial_number": trial.number, "spec": spec.to_dict()}

    def _enqueue_fixed_trial(self, measuring_baseline: bool) -> bool:
        """Puts the baseline, or the oldest interrupted trial owed a re-run, in line just before it is asked for,
        so that a stopped campaign never leaves a WAITING trial behind. A WAITING trial an older version left in
        the study goes first, as Optuna's ask takes it. Returns whether the next trial is a fixed one."""
        if self.waiting:
            self.waiting -= 1  # Optuna's ask takes it
            return True
        if measuring_baseline:
            self.study.enqueue_trial(self.space.to_params(self.space.baseline),
                                     user_attrs={"role": studies.ROLE_BASELINE})
            return True
        if self.reruns:
            studies.enqueue_rerun(self.study, self.reruns.pop(0))
            return True
        return False

    def _space_exhausted(self) -> bool:
        """Whether the controller's next trial could only repeat an architecture; counted only once the study holds
        as many trials as the space has architectures (the tiny spaces of tests and demos), so a large space costs
        no read of the study."""
        return self.exhausted or (self.trial_count >= self.space.size and space_exhausted(self.study, self.space))

    def _complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        if trial_id not in self.pending:
            return
        trial, spec = self.pending.pop(trial_id)
        frozen = self.study._storage.get_trial(trial._trial_id)  # this trial alone, not the whole study
        if frozen.state != optuna.trial.TrialState.RUNNING:
            print(f"trial {trial.number}: result not recorded: another driver ended the trial after this one lost "
                  "the study's lock", file=self.out, flush=True)
            return
        if error or result is None or RESULT_KEY not in result:
            studies.mark_interrupted(self.study, frozen, reason="the trial's worker failed")
            frozen = self.study._storage.get_trial(trial._trial_id)
            if studies.may_rerun(frozen):
                self.reruns.append(frozen)
            print(f"trial {trial.number}: worker failed" + ("; it runs once more" if studies.may_rerun(frozen) else ""),
                  file=self.out, flush=True)
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
        """Ends trials still in flight as interrupted failures (each runs once more when the campaign resumes)."""
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


def _run_tune(config: CampaignConfig, data: ImageData, searcher: Any, trainer: Trainer, stop: _StopSignal) -> None:
    if not ray.is_initialized():
        ray.init(
            address=config.address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=True,
            logging_level=logging.ERROR,
        )
        stop.install()  # ray.init replaced the SIGTERM handler
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
    stop.tune_running = True
    try:
        tuner.fit()
    finally:
        stop.tune_running = False
