"""The Ray Tune executor: a thin adapter between the campaign policy (:mod:`nas.campaign`) and Tune, and the only
module that imports Ray.

Tune runs the trials; :class:`PolicySearcher` asks the policy for each trial and hands it the result, so the study
stays the single source of truth and Tune's own state is disposable. With successive halving, a worker reports
each rung's result as an intermediate result and :class:`PolicyScheduler` answers with the policy's decision
(:meth:`nas.campaign.Campaign.judge`): a Tune function trainable reports synchronously (its training thread waits
in ``tune.report`` until the driver has processed the result), so a trial judged behind trains no further.

The dataset is put in Ray's object store once per campaign and cached in each worker process, which Tune reuses
between trials. Local Ray starts by itself; ``address`` joins a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, TextIO

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the study is the record; no Tune CSV/JSON logs
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import ray  # noqa: E402  (Tune reads the variables above when it is imported)
from ray import tune  # noqa: E402
from ray.tune import Callback  # noqa: E402
from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from nas.campaign import (  # noqa: E402
    Campaign,
    CampaignConfig,
    Placement,
    ResourceError,
    StopSignal,
    Terminated,
    TrialPlan,
    check_placeable,
    trials_at_once,
)
from nas.data import ImageData  # noqa: E402
from nas.evaluate import Trainer, evaluate_candidate  # noqa: E402
from nas.local import load_campaign_data  # noqa: E402
from nas.outputs import ray_storage_path  # noqa: E402
from nas.ray_head import HeadStartError, LocalHead  # noqa: E402
from nas.recipe import TrainConfig  # noqa: E402
from nas.records import EvalResult  # noqa: E402
from nas.train import train_and_evaluate  # noqa: E402
from search_spaces.spec import ArchSpec  # noqa: E402

RESULT_KEY = "eval_result_json"
TIMING_KEY = "step_time_json"  # an intermediate result: S/S0 as soon as it is measured, before proxy training
NODE_KEY = "ray_node_id"
RUNG_KEY = "rung_result_json"  # an intermediate result: the trial's EvalResult at a successive-halving rung
#: How long a trial may wait for its resources before the campaign says so (once per trial).
PENDING_REPORT_S = 60.0

class RayExecutor:
    """Runs a campaign's trials as Ray Tune trials: ``config.workers`` at a time, each with ``cpus_per_trial``
    CPUs and ``gpus_per_trial`` GPUs (None: one when the cluster has GPUs); ``workers`` None: as many as the cluster
    holds (:func:`nas.campaign.trials_at_once`)."""

    def __init__(self, *, trainer: Trainer = train_and_evaluate) -> None:
        self.trainer = trainer
        self._gpus_per_trial: float | None = None
        self._workers = 1
        self._head: LocalHead | None = None

    def prepare(self, config: CampaignConfig) -> None:
        """Joins the cluster (or starts a local Ray head of its own, :mod:`nas.ray_head`) and checks that a node can
        hold a trial, before the study is touched: an unreachable cluster or an impossible trial is one line, not a
        study created for nothing or a silent wait."""
        try:
            if not ray.is_initialized():
                self._join(config.address or os.environ.get("RAY_ADDRESS"))
            gpus = config.gpus_per_trial
            if gpus is None:
                gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
            nodes = ray.nodes()
            check_placeable(nodes, cpus=config.cpus_per_trial, gpus=gpus)
            self._workers = config.workers or trials_at_once(nodes, cpus=config.cpus_per_trial, gpus=gpus)
        except BaseException:
            self.close()
            raise
        self._gpus_per_trial = gpus

    def close(self) -> None:
        """Leaves Ray, and stops the local head :meth:`prepare` started (a joined cluster is left running)."""
        if self._head is not None:
            ray.shutdown()
            self._head.stop()
            self._head = None

    def _join(self, address: str | None) -> None:
        if address is None:
            try:
                self._head = LocalHead.start()
            except HeadStartError as error:
                raise ResourceError(f"{error}\nRay could not start on this machine (its output above says why); "
                                    "--executor local runs the campaign without Ray") from None
        try:
            ray.init(
                address=address,  # None: this head, found in its temp directory
                _temp_dir=str(self._head.temp_dir) if self._head is not None else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=True,
                logging_level=logging.ERROR,
            )
        except ConnectionError as error:
            joined = address if self._head is None else f"the local head in {self._head.temp_dir}"
            raise ResourceError(
                f"no Ray cluster to join at address {joined!r} ({error}): start one with `ray start "
                "--head` (or on the cluster's head node), or leave --address unset to run on a local Ray"
            ) from None

    def run(self, campaign: Campaign, stop: StopSignal) -> None:
        if self._gpus_per_trial is None:
            self.prepare(campaign.config)
            stop.install()  # ray.init replaced the SIGTERM handler
        placement = Placement(workers=self._workers, threads=campaign.config.cpus_per_trial,
                              device="cuda" if self._gpus_per_trial else "cpu")
        data = load_campaign_data(campaign, placement)
        _run_tune(campaign.config, data, PolicySearcher(campaign), PolicyScheduler(campaign), self.trainer, stop,
                  gpus=self._gpus_per_trial, workers=self._workers)


class PolicySearcher(Searcher):
    """Ray Tune ``Searcher`` that starts what the campaign policy proposes and hands it the results. It ends the
    run (``FINISHED``) once the policy is over; a trial whose worker died goes back as ``None`` (interrupted)."""

    def __init__(self, campaign: Campaign) -> None:
        super().__init__(metric=None, mode=None)
        self.campaign = campaign
        self.numbers: dict[str, int] = {}  # Tune's trial id -> the study's trial number

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its searcher into its own experiment state, which is never restored here (the study is
        the record); the campaign, which holds the driver lock's heartbeat thread, stays out of that copy."""
        return {key: value for key, value in self.__dict__.items() if key != "campaign"} | {"campaign": None}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict | None:
        proposal = self.campaign.next_trial()
        if proposal is None:
            return Searcher.FINISHED if self.campaign.over else None
        self.numbers[trial_id] = proposal.number
        return {"trial_number": proposal.number, "spec": proposal.spec.to_dict(), "plan": proposal.plan.to_dict()}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """An intermediate result: a trial's S/S0, which the campaign caches before the trial's training ends."""
        number = self.numbers.get(trial_id)
        if number is not None and TIMING_KEY in result:
            self.campaign.record_timing(number, json.loads(result[TIMING_KEY]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """A trial ended: its final result is recorded, or ``None`` when its worker died. A trial
        :class:`PolicyScheduler` stopped ends with its rung result; the policy recorded it then, so it is
        no longer in flight there and this record is ignored."""
        number = self.numbers.pop(trial_id, None)
        if number is None:
            return
        if error or result is None or RESULT_KEY not in result:
            self.campaign.record(number, None)
            return
        self.campaign.record(number, EvalResult.from_json(result[RESULT_KEY]), node=result.get(NODE_KEY))


class PolicyScheduler(FIFOScheduler):
    """Ray Tune scheduler that hands each rung result (:data:`RUNG_KEY`) to the campaign policy and stops the
    trial when the policy says so (:meth:`nas.campaign.Campaign.judge`, which records the stopped trial); every
    other result goes on, first come first served."""

    def __init__(self, campaign: Campaign) -> None:
        super().__init__()
        self.campaign = campaign

    def __getstate__(self) -> dict[str, Any]:
        """As :meth:`PolicySearcher.__getstate__`: Tune's pickled copy leaves the campaign out."""
        return {key: value for key, value in self.__dict__.items() if key != "campaign"} | {"campaign": None}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if RUNG_KEY not in result:
            return TrialScheduler.CONTINUE
        promoted = self.campaign.judge(trial.config["trial_number"], EvalResult.from_json(result[RUNG_KEY]))
        return TrialScheduler.CONTINUE if promoted else TrialScheduler.STOP


class PendingWatch(Callback):
    """Says, once per trial, when a trial has waited ``patience_s`` for its resources, and what the cluster has
    free: a trial that fits a node but never gets one (other jobs hold it, a node died) is reported, never waited
    on silently. Between results it lets the campaign say which trials run (:meth:`Campaign.heartbeat`)."""

    def __init__(
        self,
        campaign: Campaign,
        out: TextIO,
        *,
        cpus: int,
        gpus: float,
        patience_s: float = PENDING_REPORT_S,
        clock: Callable[[], float] = time.monotonic,
        available: Callable[[], dict[str, float]] = ray.available_resources,
    ) -> None:
        self._campaign = campaign
        self._out = out
        self._cpus, self._gpus = cpus, gpus
        self._patience_s = patience_s
        self._clock = clock
        self._available = available
        self._since: dict[str, float] = {}  # Tune trial id -> when it was first seen waiting
        self._reported: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        """As :meth:`PolicySearcher.__getstate__`: Tune's pickled copy leaves the campaign out."""
        return {key: value for key, value in self.__dict__.items() if key != "_campaign"} | {"_campaign": None}

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._campaign.heartbeat()
        now = self._clock()
        for trial in trials:
            if trial.status != trial.PENDING:
                self._since.pop(trial.trial_id, None)
                continue
            waited = now - self._since.setdefault(trial.trial_id, now)
            if waited >= self._patience_s and trial.trial_id not in self._reported:
                self._reported.add(trial.trial_id)
                free = self._available()
                number = trial.config.get("trial_number", "?")
                print(f"trial {number} has waited {waited:.0f} s for {self._cpus} CPU(s) and {self._gpus:g} GPU(s); "
                      f"the cluster has {free.get('CPU', 0):g} CPU(s) and {free.get('GPU', 0):g} GPU(s) free: "
                      "other work holds them, or a node left. It starts when they free up; Ctrl-C stops the "
                      "campaign (resume later), or lower --workers", file=self._out, flush=True)


_WORKER_DATA: dict[str, ImageData] = {}


def evaluate_trial(
    config: dict[str, Any], *, data: ImageData, train: TrainConfig, cpus: int, trainer: Trainer = train_and_evaluate
) -> None:
    """Tune trainable: evaluates one trial in a worker (:func:`nas.evaluate.evaluate_candidate`: constraints, S/S0
    inside the node's timing lock, proxy training) and reports its EvalResult as JSON, with the id of the Ray node
    it ran on.

    The worker keeps the dataset (and its copy on the device) between trials, so a reused worker fetches it
    once; the trial uses its GPU when Ray assigned one, else ``cpus`` CPU threads.
    """
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    key = f"{data.name}:{device}"
    if key not in _WORKER_DATA:
        _WORKER_DATA.clear()
        _WORKER_DATA[key] = data.to(device)
    spec = ArchSpec.from_dict(config["spec"])
    plan = TrialPlan.from_dict(config["plan"])
    train = dataclasses.replace(train, device=device, threads=cpus)
    rungs = _RungReporter()
    result = evaluate_candidate(spec, _WORKER_DATA[key], train, plan, trainer,
                                on_timed=lambda measurement: tune.report({TIMING_KEY: json.dumps(measurement)}),
                                on_rung=rungs)
    if rungs.stopped:
        # The driver stopped the trial at a rung and recorded it; training has returned, and with it the memory
        # it held. End the training thread as Tune's own report would have (Tune then reuses this worker).
        sys.exit(0)
    tune.report({RESULT_KEY: result.to_json(), NODE_KEY: ray.get_runtime_context().get_node_id()})


class _RungReporter:
    """A worker's judge at a rung: reports the rung's result to the driver, where :class:`PolicyScheduler`
    decides while the training thread waits in ``tune.report``. Going on, Tune lets the report return (True).
    Stopping, Tune ends the wait with ``SystemExit`` when it finishes the trial (to reuse the worker, or to
    release it); that is taken here as "stop" (False), so that the trainer returns through its own path and
    releases the trial's memory before the thread ends."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self, result: EvalResult) -> bool:
        try:
            tune.report({RUNG_KEY: result.to_json()})
        except SystemExit:
            self.stopped = True
            return False
        return True


def _run_tune(
    config: CampaignConfig, data: ImageData, searcher: PolicySearcher, scheduler: PolicyScheduler, trainer: Trainer,
    stop: StopSignal, *, gpus: float, workers: int
) -> None:
    trainable = tune.with_resources(
        tune.with_parameters(
            evaluate_trial, data=data, train=config.train, cpus=config.cpus_per_trial, trainer=trainer
        ),
        {"cpu": config.cpus_per_trial, "gpu": gpus},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=-1, max_concurrent_trials=workers,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"{config.study}-{int(time.time())}",
            storage_path=str(ray_storage_path()),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[PendingWatch(searcher.campaign, searcher.campaign.out, cpus=config.cpus_per_trial, gpus=gpus)],
        ),
    )
    stop.graceful = _tune_stop
    try:
        tuner.fit()
    finally:
        stop.graceful = None


def _tune_stop(signum: int, frame: Any) -> None:
    """Asks Tune to end the run as its own Ctrl-C does: through the "end the run" handler ``fit()`` installs."""
    tune_stop = signal.getsignal(signal.SIGUSR1)
    if not callable(tune_stop):
        raise Terminated()
    tune_stop(signum, frame)
