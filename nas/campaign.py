"""A campaign: its settings (:class:`CampaignConfig`) and its policy (:class:`Campaign`, :func:`run_campaign`).

A campaign file (``experiments/*.yaml``) holds a mapping of the settings; every field can be overridden by a
``nas search`` flag. Unknown keys are refused. The proxy settings (space, data, training recipe, per-trial
resources, seed) define what a trial's numbers mean, so a study refuses to resume under different ones.

The policy decides which trial runs next and what becomes of each result (baseline first and alone, the budget,
roles, re-runs of interrupted trials, the best so far, and with ``scheduler: {type: asha}`` which trials stop at a
rung, :mod:`nas.halving`); an executor (:mod:`nas.runner` on Ray Tune, the default and
the cluster path, or :mod:`nas.local` in this process) runs what it proposes. This module imports neither Ray nor
torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, TextIO

import optuna

from nas import records
from nas import study as studies
from nas.controllers import CONTROLLERS, distributions, make_sampler, space_exhausted
from nas.halving import SchedulerConfig, promotes, promotion_cutoff, rung_epochs
from nas.outputs import default_storage_url, trial_spec_name
from nas.progress import CampaignProgress, format_duration
from nas.recipe import MAX_AUTO_BATCH_SIZE, TIMING_PROTOCOL_FIELDS, TimingConfig, TrainConfig, resolve_recipe
from nas.records import EvalResult
from nas.sources import DataError, check_source, holdout_count
from nas.states import is_baseline, is_interrupted
from nas.step_cache import cache_key
from nas.storage import STORAGE_ERRORS, DriverLock, StudyError, make_storage, mask_url, storage_errors
from nas.study import RewardExponents, StudySettings
from nas.trials import best_trials
from rewards import PARAMS_EXPONENT, STEP_TIME_EXPONENT
from search_spaces import presets
from search_spaces.checks import check_choice, check_int, check_real, check_string
from search_spaces.io import read_yaml_mapping
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec, SpecError

# TrainConfig fields a campaign decides for itself: the device follows the trial's resources, threads its CPUs.
_RUNNER_OWNED_TRAIN_FIELDS = ("device", "threads", "measure_step_time")
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Ranges of the integer fields. The caps refuse absurd values before any study, directory or Ray node exists; the
# seed is capped at 2^32 - 1 because Optuna's samplers seed NumPy with it.
_INTEGER_RANGES = {"trials": (1, 100_000), "cpus_per_trial": (1, 1024), "seed": (0, 2**32 - 1)}
#: ``with_overrides`` keys (the ``nas search`` flags) that set a field of the ``scheduler`` section: key -> field.
SCHEDULER_OVERRIDES = {"scheduler": "type", "min_epochs": "min_epochs", "reduction_factor": "reduction_factor"}


class CampaignError(ValueError):
    """A campaign file or option is invalid; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class CampaignConfig:
    """One search campaign. ``trials`` counts finished trials wanted in the study, the baseline included.

    ``storage`` None means ``sqlite:///runs/<study>.db``. ``address`` None starts a local Ray; ``auto`` or
    ``HOST:PORT`` joins a cluster. ``workers`` None runs as many trials at once as the cluster holds
    (:func:`trials_at_once`), as Ray Tune's own default does. ``gpus_per_trial`` None is 1 when the cluster has GPUs,
    else 0.
    The reward is ``A * (S / S_baseline)^step_time_exponent * (P / P_baseline)^params_exponent``, with S/S_baseline
    timed at ``timing``'s settings (by default the space's backbone's training image size and the proxy's batch)
    against the baseline in interleaved windows. ``max_step_time_ratio`` and ``max_params_ratio`` are hard limits
    on S/S_baseline and P/P_baseline (MnasNet's hard-constraint form): a candidate over either is PRUNED, with the
    reason, before any proxy training. ``scheduler`` with ``type: asha`` stops candidates that are behind at a rung
    (:mod:`nas.halving`); a stopped trial is PRUNED with its rung and rung reward.
    """

    space: str = "tiny"
    data: str = "synthetic"
    val_fraction: float = 0.1
    trials: int = 20
    # TPE selected the best architectures at 50 and 100 evaluations on NAS-Bench-201 and tied at 200
    # (benchmarks/bench_controllers.py, RESULTS.md); ``rl`` is the paper's method.
    controller: str = "tpe"
    study: str = "nas"
    storage: str | None = None
    address: str | None = None
    workers: int | None = None
    cpus_per_trial: int = 1
    gpus_per_trial: float | None = None
    seed: int = 0
    step_time_exponent: float = STEP_TIME_EXPONENT
    params_exponent: float = PARAMS_EXPONENT
    train: TrainConfig = field(default_factory=TrainConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    max_step_time_ratio: float | None = None
    max_params_ratio: float | None = None
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        for name, (low, high) in _INTEGER_RANGES.items():
            check_int(name, getattr(self, name), low, high, error=CampaignError)
        check_int("workers", self.workers, 1, 1024, optional=True, none_name="null (as many as fit)",
                  error=CampaignError)
        check_choice("controller", self.controller, CONTROLLERS, error=CampaignError)
        if not isinstance(self.study, str) or not _STUDY_NAME.fullmatch(self.study):
            raise CampaignError(
                f"study must be 1-100 letters, digits, '_', '.' or '-' (starting with a letter or digit), "
                f"got {self.study!r}"
            )
        check_real("gpus_per_trial", self.gpus_per_trial, 0, 64, optional=True, none_name="null", error=CampaignError)
        check_real("val_fraction", self.val_fraction, 0, 0.5, low_open=True, error=CampaignError)
        for name in ("step_time_exponent", "params_exponent"):
            check_real(name, getattr(self, name), -10, 10, error=CampaignError)
        for name in ("space", "data"):
            check_string(name, getattr(self, name), error=CampaignError)
        for name in ("storage", "address"):
            check_string(name, getattr(self, name), optional=True, none_name="null", error=CampaignError)
        if not isinstance(self.train, TrainConfig):
            raise CampaignError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if not isinstance(self.timing, TimingConfig):
            raise CampaignError(f"timing must be a TimingConfig, got {type(self.timing).__name__}")
        for name in ("max_step_time_ratio", "max_params_ratio"):
            check_real(name, getattr(self, name), 0, 1e6, low_open=True, optional=True, none_name="null",
                       error=CampaignError)
        if not isinstance(self.scheduler, SchedulerConfig):
            raise CampaignError(f"scheduler must be a SchedulerConfig, got {type(self.scheduler).__name__}")
        scheduler, epochs = self.scheduler, self.train.epochs
        if scheduler.enabled and not rung_epochs(scheduler.min_epochs, scheduler.reduction_factor, epochs):
            factor = scheduler.reduction_factor
            raise CampaignError(
                f"scheduler.min_epochs {scheduler.min_epochs} leaves no rung in train.epochs {epochs} with scheduler "
                f"{scheduler.type!r}: a rung must leave 1/{factor} (reduction_factor) of the training to save, so "
                f"it is at most epoch {epochs * (factor - 1) // factor}: lower min_epochs, raise epochs, or use "
                "scheduler type 'none'"
            )
        try:  # the name and options only: the files it names are checked when the campaign starts
            check_source(self.data, image_size=self.train.image_size, files=False)
        except DataError as error:
            raise CampaignError(f"data: {error}") from None

    def check_inputs(self) -> None:
        """Refuses a space that does not load, a data source that would be refused (missing or malformed files,
        caps), a backbone that pins other input channels than the data has, and a batch larger than the training
        set.

        Construction checks values only; this reads the space file and the data's headers, without loading any
        image. ``nas search`` calls it before it creates a study, a directory or a Ray node.
        """
        try:
            space = presets.get_space(self.space)
        except (SpecError, FileNotFoundError) as error:
            raise CampaignError(f"space: {error}") from None
        try:
            summary = check_source(self.data, image_size=self.train.image_size)
        except DataError as error:
            raise CampaignError(f"data: {error}") from None
        pinned = space.baseline.in_channels
        if pinned is not None and summary.in_channels is not None and pinned != summary.in_channels:
            raise CampaignError(f"space: its backbone pins in_channels {pinned}, but the data {self.data!r} has "
                                f"{summary.in_channels} channel(s); unpin it to follow the data, or use other data")
        if summary.num_images is not None:
            train_images = summary.num_images - holdout_count(summary.num_images, self.val_fraction)
            if self.train.batch_size is not None and self.train.batch_size > train_images:
                raise CampaignError(
                    f"train.batch_size {self.train.batch_size} is larger than the {train_images:,} training images "
                    f"of {self.data!r} (after holding out val_fraction {self.val_fraction:g}); use at most "
                    f"{train_images:,}"
                )

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage_url(self.study)

    def proxy_settings(self) -> dict[str, Any]:
        """What a trial's numbers depend on; a resumed study must match these exactly."""
        train = {k: v for k, v in self.train.to_dict().items() if k not in _RUNNER_OWNED_TRAIN_FIELDS}
        return {
            "data": self.data,
            "val_fraction": self.val_fraction,
            "cpus_per_trial": self.cpus_per_trial,
            "gpus_per_trial": self.gpus_per_trial,
            "seed": self.seed,
            "step_time_exponent": self.step_time_exponent,
            "params_exponent": self.params_exponent,
            "train": train,
            "timing": self.timing.to_dict(),
            "max_step_time_ratio": self.max_step_time_ratio,
            "max_params_ratio": self.max_params_ratio,
            "scheduler": self.scheduler.to_dict(),
        }

    def study_settings(self) -> StudySettings:
        """What the study keeps of this campaign and checks on resume (:func:`nas.study.open_study`)."""
        return StudySettings(
            study=self.study,
            storage_url=self.storage_url,
            proxy=self.proxy_settings(),
            free=frozenset(f"timing.{field}" for field in TIMING_PROTOCOL_FIELDS),
            campaign=self.to_dict(),
            exponents=self.reward_exponents,
        )

    @property
    def reward_exponents(self) -> RewardExponents:
        """The reward's exponents of S and P (:func:`nas.study.record_result`)."""
        return RewardExponents(step_time=self.step_time_exponent, params=self.params_exponent)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["train"] = {k: v for k, v in self.train.to_dict().items() if k not in _RUNNER_OWNED_TRAIN_FIELDS}
        data["timing"] = self.timing.to_dict()
        data["scheduler"] = self.scheduler.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CampaignConfig:
        """Builds a config from plain data, refusing unknown keys (in the campaign and in its ``train`` part)."""
        if not isinstance(data, Mapping):
            raise CampaignError(f"a campaign must be a mapping, got {type(data).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in data if key not in allowed]
        if unknown:
            raise CampaignError(f"unknown campaign key(s) {unknown}; allowed keys are {allowed}")
        fields = dict(data)
        train = _section(fields, "train", "training settings", TrainConfig, excluded=_RUNNER_OWNED_TRAIN_FIELDS)
        timing = _section(fields, "timing", "timing settings", TimingConfig)
        scheduler = _section(fields, "scheduler", "successive-halving settings", SchedulerConfig)
        try:
            fields["train"] = TrainConfig(**train)
            fields["timing"] = TimingConfig(**timing)
            fields["scheduler"] = SchedulerConfig(**scheduler)
            return cls(**fields)
        except CampaignError:
            raise
        except (TypeError, ValueError) as error:
            raise CampaignError(str(error)) from None

    def with_overrides(self, overrides: Mapping[str, Any]) -> CampaignConfig:
        """This config with the given fields replaced; ``None`` values (flags not given) are ignored.

        Keys ``epochs``, ``image_size`` and ``batch_size`` go to the training settings; ``scheduler`` (the
        scheduler's type), ``min_epochs`` and ``reduction_factor`` to the successive-halving settings.
        """
        given = {key: value for key, value in overrides.items() if value is not None}
        train_keys = {"epochs", "image_size", "batch_size"}
        data = self.to_dict()
        data["train"].update({key: value for key, value in given.items() if key in train_keys})
        data["scheduler"].update({SCHEDULER_OVERRIDES[key]: value for key, value in given.items()
                                  if key in SCHEDULER_OVERRIDES})
        data.update({key: value for key, value in given.items() if key not in train_keys | set(SCHEDULER_OVERRIDES)})
        return CampaignConfig.from_dict(data)


def _section(
    fields: dict[str, Any], name: str, what: str, config: type, *, excluded: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    """The mapping under ``name`` (popped from ``fields``; missing or null is empty), refusing keys that are not
    fields of ``config`` (or are ``excluded``), with the allowed keys in the message."""
    section = fields.pop(name, None) or {}
    if not isinstance(section, Mapping):
        raise CampaignError(f"{name} must be a mapping of {what}, got {section!r}")
    allowed = [f.name for f in dataclasses.fields(config) if f.name not in excluded]
    unknown = [key for key in section if key not in allowed]
    if unknown:
        raise CampaignError(f"unknown {name} key(s) {unknown}; allowed keys are {allowed}")
    return section


def load_campaign(path: str | Path) -> CampaignConfig:
    """Reads a campaign file; errors name the file and the field."""
    data = read_yaml_mapping(path, "campaign")
    try:
        return CampaignConfig.from_dict(data)
    except CampaignError as error:
        raise CampaignError(f"{path}: {error}") from None


# --- the campaign policy ---------------------------------------------------------------------------------------


class ResourceError(ValueError):
    """The executor cannot run the campaign's trials: the Ray cluster is unreachable, or a trial asks for more than
    any node has (Tune would wait for it forever, silently; the local executor would run it slowly or on another
    device without a word)."""


def check_placeable(nodes: list[dict[str, Any]], *, cpus: int, gpus: float, where: str = "the Ray cluster") -> None:
    """Refuses a trial that no alive node can hold (``cpus`` CPUs and ``gpus`` GPUs on one node), naming what the
    nodes have. ``nodes`` is in :func:`ray.nodes`'s form (the local executor describes this machine so). Ray itself
    would queue such a trial and wait for a node that never comes. Every executor checks it before the study is
    touched."""
    alive = [node for node in nodes if node.get("Alive")]
    if any(node["Resources"].get("CPU", 0) >= cpus and node["Resources"].get("GPU", 0) >= gpus for node in alive):
        return
    have = "; ".join(f"{node.get('NodeManagerAddress', '?')}: {node['Resources'].get('CPU', 0):g} CPU(s), "
                     f"{node['Resources'].get('GPU', 0):g} GPU(s)" for node in alive)
    raise ResourceError(
        f"each trial asks for {cpus} CPU(s) and {gpus:g} GPU(s) (cpus_per_trial, gpus_per_trial), but no node of "
        f"{where} has that ({have or 'no node is alive'}): lower them (--cpus-per-trial, "
        "--gpus-per-trial 0 on a machine without a GPU), or add a node that has them"
    )


def trials_at_once(nodes: list[dict[str, Any]], *, cpus: int, gpus: float) -> int:
    """How many trials of ``cpus`` CPUs and ``gpus`` GPUs the alive ``nodes`` (:func:`ray.nodes`'s form) hold at
    once, at least 1: what ``workers`` None means.

    Example: two nodes of 16 CPUs and 2 GPUs, trials of 4 CPUs and 1 GPU: each node holds min(16 // 4, 2 // 1) = 2,
    so 4 trials at once; with ``gpus`` 0, 4 + 4 = 8.
    """
    held = 0
    for node in nodes:
        if node.get("Alive"):
            resources = node["Resources"]
            fits = int(resources.get("CPU", 0) // cpus)
            if gpus > 0:
                fits = min(fits, int(resources.get("GPU", 0) // gpus))
            held += fits
    return max(1, held)


@dataclass(frozen=True)
class Placement:
    """How an executor runs a campaign's trials: ``workers`` at once, ``threads`` CPU threads each, on ``device``
    (the campaign's header says so)."""

    workers: int
    threads: int
    device: str

    def describe(self) -> str:
        trials = "1 trial at a time" if self.workers == 1 else f"{self.workers} trials at once"
        threads = "1 thread" if self.threads == 1 else f"{self.threads} threads"
        return f"{trials}, {threads} each, on {self.device}"


class Terminated(KeyboardInterrupt):
    """SIGTERM to the driver, handled as Ctrl-C is: trials in flight end as interrupted (each runs once more on
    resume), nothing is left RUNNING or WAITING, and the driver lock is released."""


class MachineryError(RuntimeError):
    """The campaign stopped because the machinery failed a trial (the timing lock, the storage, the disk, a device:
    :func:`nas.train.machinery_fault`), not its candidate; the trial is interrupted and runs again on resume."""


class LockLostError(StudyError):
    """The driver lost its study's lock mid-campaign; it stopped starting trials and let those in flight record."""


@dataclass(frozen=True)
class CampaignOutcome:
    """How a :func:`run_campaign` call ended: finished trials in the study, the budget and the best trial."""

    study_name: str
    storage: str
    finished: int
    budget: int
    ran: int
    best_trial: int | None
    best_reward: float | None
    best_spec: ArchSpec | None  # the best trial's architecture, named after it (STUDY-trialN)
    recovered: tuple[int, ...]
    exhausted: bool = False  # every architecture of the space is in the study: stopped short of the budget


@dataclass(frozen=True)
class TrialPlan:
    """How a proposal is evaluated, beyond proxy training: the step-time measurement and the constraints.

    ``timing`` is resolved (image and batch size filled in). ``reference`` is the baseline's spec S/S0 is timed
    against, None when the trial is the baseline itself (its S is timed alone: it is S0). ``cached`` is a
    step-time cache entry that replaces timing. The constraints are the campaign's, with the baseline's parameter
    count to apply ``max_params_ratio`` to. ``rungs`` are the epochs successive halving judges the trial at
    (:func:`nas.halving.rung_epochs`), empty without it.
    """

    timing: TimingConfig
    reference: ArchSpec | None = None
    reference_parameters: int | None = None
    cached: Mapping[str, Any] | None = None
    max_step_time_ratio: float | None = None
    max_params_ratio: float | None = None
    rungs: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as the plan travels to a Ray worker."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["timing"] = self.timing.to_dict()
        data["reference"] = None if self.reference is None else self.reference.to_dict()
        data["cached"] = None if self.cached is None else dict(self.cached)
        data["rungs"] = list(self.rungs)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialPlan:
        fields = dict(data)
        fields["timing"] = TimingConfig(**fields["timing"])
        fields["reference"] = None if fields["reference"] is None else ArchSpec.from_dict(fields["reference"])
        fields["rungs"] = tuple(fields.get("rungs", ()))
        return cls(**fields)


@dataclass(frozen=True)
class Proposal:
    """A trial the policy wants run: its number in the study, the architecture and how to evaluate it."""

    number: int
    spec: ArchSpec
    plan: TrialPlan


class Executor(Protocol):
    """Runs a campaign's trials: asks :meth:`Campaign.next_trial` for work whenever it has room, evaluates each
    proposal (proxy training, on whatever hardware it manages) and hands the result back with
    :meth:`Campaign.record`, until :attr:`Campaign.over`. It loads the data (the policy never touches tensors)
    and calls :meth:`Campaign.start` with its name first. ``stop`` is the driver's SIGTERM handling."""

    def prepare(self, config: CampaignConfig) -> None:
        """Checks, before the study is opened, that this executor can run ``config``'s trials (a cluster to join,
        room for a trial, a device); raises ValueError with one line saying what is missing."""

    def run(self, campaign: Campaign, stop: StopSignal) -> None: ...

    def close(self) -> None:
        """Releases what :meth:`prepare` took (a local Ray it started), however the campaign ended."""


class Campaign:
    """The campaign policy: which trial runs next and what becomes of each result. It imports no Ray: an executor
    (Ray Tune's adapter in :mod:`nas.runner`, the in-process loop of :mod:`nas.local`) runs what it proposes.

    The baseline runs first and alone (every reward is normalized by its S and P); at most ``budget - finished``
    trials are in flight; an interrupted trial owed its one re-run comes before new proposals; a trial whose
    worker died is an interrupted failure that runs once more. Nothing new starts once the budget is met, the
    baseline failed, the driver lock is lost, the space is exhausted or the storage fails.

    Each proposal carries its :class:`TrialPlan`: S/S0 comes from the storage's step-time cache when this
    architecture was timed against this baseline on this device at these settings before, and every new
    measurement goes into the cache.

    With successive halving (``config.scheduler``), the plan carries the rung epochs and the executor's trainer
    asks :meth:`judge` at each; a trial judged behind is recorded PRUNED there and then (:mod:`nas.halving`).
    """

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        config: CampaignConfig,
        *,
        out: TextIO,
        lock: DriverLock | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.study = study
        self.space = space
        self.config = config
        self.exponents = config.reward_exponents
        self.out = out
        self.lock = lock
        self.pending: dict[int, tuple[optuna.trial.Trial, ArchSpec]] = {}
        self.finished = len(studies.finished_trials(study))
        self.completed = 0  # trials this run recorded
        self.progress = CampaignProgress(clock)
        self.baseline_failure: str | None = None
        self.storage_failure: Exception | None = None
        self.machinery_failure: str | None = None  # a trial's fault that is not the candidate's: the campaign stops
        self.exhausted = False
        self._distributions = distributions(space)
        trials = study.get_trials(deepcopy=False)
        self._trial_count = len(trials)  # trials in the study, kept up to date here rather than re-read per trial
        # WAITING trials an older version left in the study; Optuna's ask takes them first
        self._waiting = sum(trial.state == optuna.trial.TrialState.WAITING for trial in trials)
        self._reruns = studies.pending_reruns(study)  # interrupted trials owed their one re-run, oldest first
        best = best_trials(study, 1)
        # (reward, trial number) of the best complete trial, kept up to date here rather than re-read per trial
        self.best: tuple[float, int] | None = (best[0].value, best[0].number) if best else None
        self.timing = config.timing.resolved(image_size=space.baseline.train_image_size,
                                             batch_size=config.train.batch_size or MAX_AUTO_BATCH_SIZE)
        self.cache = studies.step_time_cache(study)
        self._timed_early: set[int] = set()  # trials whose S/S0 went into the cache before their result came
        self._network_io: dict[str, int] | None = None  # the data's classes and channels, once start() has them
        # Successive halving, from the study's rung records: every reward counted at each rung, by rung epoch and
        # the trial it belongs to (a re-run's is its original's number, so it replaces rather than adds), and the
        # rungs each trial was promoted at (a re-run inherits them). An interrupted trial's rewards do not count:
        # its re-run reports them again.
        self._rung_rewards: dict[int, dict[int, float]] = {}
        self._promoted: dict[int, set[int]] = {}
        self._rung_records: dict[int, list[dict[str, Any]]] = {}  # trial number -> its RUNGS attribute (pending)
        for trial in trials:
            for rung in trial.user_attrs.get(records.RUNGS, ()):
                if rung["promoted"]:
                    self._promoted.setdefault(trial.number, set()).add(rung["epoch"])
                if not is_interrupted(trial):
                    self._rung_rewards.setdefault(rung["epoch"], {})[_lineage(trial.user_attrs, trial.number)] = (
                        rung["reward"])

    def start(
        self, data_name: str, *, train_images: int, holdout_images: int, flips: bool, num_classes: int,
        in_channels: int, placement: Placement,
    ) -> None:
        """Says what the campaign runs, once the executor has loaded the data (``train_images`` training images,
        whose mirror images keep their labels when ``flips``, and ``holdout_images`` that every accuracy is counted
        on, in ``num_classes`` classes with ``in_channels`` channels: the networks' head and stem, which the
        step-time cache's keys hold and exported specs carry) and knows its ``placement``, and records the proxy
        recipe as it resolves for that data (README, "Proxy training") in the study's ``recipe`` attribute; every
        trial records its own too."""
        self._network_io = {"num_classes": num_classes, "in_channels": in_channels}
        self.progress.start(workers=placement.workers)
        halving = f", successive halving at epochs {list(self._rungs)}" if self._rungs else ""
        print(f"campaign {self.config.study!r}: space {self.space.name} ({self.space.size:,} architectures), "
              f"{data_name}, {self.config.controller} controller{halving}, {self.finished}/{self.config.trials} "
              f"trials finished, storage {mask_url(self.config.storage_url)}", file=self.out, flush=True)
        print(f"running {placement.describe()} (workers, cpus_per_trial)", file=self.out, flush=True)
        recipe = resolve_recipe(self.config.train, train_images=train_images, flips=flips)
        try:
            studies.record_recipe(self.study, {k: v for k, v in recipe.to_dict().items()
                                                if k not in _RUNNER_OWNED_TRAIN_FIELDS})
            studies.record_network_io(self.study, **self._network_io)
            studies.record_holdout(self.study, holdout_images)
        except STORAGE_ERRORS as error:
            self._stop_on(error)
        epochs = f"{recipe.epochs} epoch{'' if recipe.epochs == 1 else 's'}"
        print(f"proxy recipe: {epochs} at batch {recipe.batch_size} ({train_images // recipe.batch_size} steps per "
              f"epoch), {recipe.optimizer} lr {recipe.learning_rate:g}, warm-up {recipe.warmup_steps} steps, augment "
              f"{recipe.augment}", file=self.out, flush=True)
        self.progress.printed()

    @property
    def over(self) -> bool:
        """Nothing is in flight and nothing will start: the executor may stop."""
        return not self.pending and self._stopping()

    def _stopping(self) -> bool:
        return (self.storage_failure is not None or self.baseline_failure is not None or self.exhausted
                or self.machinery_failure is not None
                or (self.lock is not None and self.lock.lost) or self.finished >= self.config.trials)

    def next_trial(self) -> Proposal | None:
        """The next trial to start, or None when none may start now: the baseline is still being measured, the
        budget is taken by trials in flight, or the campaign is stopping (see :attr:`over`)."""
        try:
            return self._next_trial()
        except STORAGE_ERRORS as error:
            self._stop_on(error)
            return None

    def record(self, number: int, result: EvalResult | None, *, node: str | None = None) -> None:
        """Records the result of trial ``number``; ``None`` means its worker died (an interrupted failure that
        runs once more). ``node`` names where it ran."""
        try:
            self._record(number, result, node)
        except STORAGE_ERRORS as error:
            self._stop_on(error)

    def judge(self, number: int, result: EvalResult) -> bool:
        """Successive halving's decision on trial ``number`` at a rung: whether it trains on (True) or stops.

        ``result`` is the trial's evaluation after ``result.epochs_completed`` epochs (with its S/S0). Its reward,
        by the trial's own formula, is reported to Optuna as the intermediate value at that epoch and appended to
        the trial's ``rungs`` attribute with the decision, at once. The decision is :func:`nas.halving.promotes`
        against every reward recorded at this rung; the baseline always goes on (its rewards still count), and the
        re-run of an interrupted trial goes on at the rungs its original was promoted at, without being judged or
        counted again. A stopped trial is recorded PRUNED here (status ``stopped``, with the rung's measurements,
        normalized S and P and reward), counts as finished, and the executor's later :meth:`record` of it is
        ignored. A trial not in flight here (already stopped, or ended by another driver) goes on untouched.
        """
        try:
            return self._judge(number, result)
        except STORAGE_ERRORS as error:
            self._stop_on(error)
            return True  # nothing can be recorded: the campaign is stopping, and the trial's result is lost anyway

    def record_timing(self, number: int, measurement: Mapping[str, Any]) -> None:
        """Keeps trial ``number``'s new S/S0 measurement (an EvalResult's fields, with ``device`` and ``timing``) in
        the step-time cache as soon as its worker took it, before the trial's proxy training ends."""
        if number not in self.pending:
            return
        trial, spec = self.pending[number]
        try:
            self._cache(spec, EvalResult.from_dict({"status": records.STATUS_OK, **measurement}),
                        baseline=is_baseline(trial.user_attrs))
        except STORAGE_ERRORS as error:
            self._stop_on(error)
            return
        self._timed_early.add(number)

    def interrupt_pending(self, reason: str) -> None:
        """Ends trials still in flight as interrupted failures (each runs once more when the campaign resumes)."""
        trials = self.study.get_trials(deepcopy=False)
        for trial, _ in self.pending.values():
            if trials[trial.number].state == optuna.trial.TrialState.RUNNING:
                studies.mark_interrupted(self.study, trials[trial.number], reason=reason)
        self.pending.clear()

    def _stop_on(self, error: Exception) -> None:
        """A storage that fails (a full disk, a database gone read-only) ends the campaign: nothing new starts and
        the error is raised once the executor has stopped, rather than inside it (Tune would only log it)."""
        if self.storage_failure is None:
            self.storage_failure = error

    def _judge(self, number: int, result: EvalResult) -> bool:
        if number not in self.pending:
            return True
        trial, spec = self.pending[number]
        frozen = studies.current_trial(self.study, trial)
        if frozen.state != optuna.trial.TrialState.RUNNING:
            return True  # another driver ended it after this one lost the lock; its record() will say so
        attributes = frozen.user_attrs
        epoch = result.epochs_completed
        baseline = is_baseline(attributes)
        reference = None if baseline else studies.baseline(self.study)
        normalized_step_time, normalized_parameters, reward = studies.training_reward(
            result,  # the baseline at a rung is its own reference: its reward is its accuracy
            reference_step_time_s=result.step_time_s if reference is None else reference.step_time_s,
            reference_parameters=result.parameters if reference is None else reference.parameters,
            exponents=self.exponents,
        )
        lineage = _lineage(attributes, number)
        rung_rewards = self._rung_rewards.setdefault(epoch, {})
        rung_rewards[lineage] = reward  # a re-run's replaces its original's: counted once
        inherited = epoch in self._promoted.get(lineage, set())
        promoted = baseline or inherited or promotes(reward, list(rung_rewards.values()),
                                                     self.config.scheduler.reduction_factor)
        rungs = self._rung_records.setdefault(number, [])
        rungs.append({"epoch": epoch, "accuracy": result.accuracy, "reward": reward, "promoted": promoted})
        studies.record_rung(trial, epoch, reward, rungs)
        if promoted:
            self._promoted.setdefault(number, set()).add(epoch)
            return True
        cutoff, top = promotion_cutoff(list(rung_rewards.values()), self.config.scheduler.reduction_factor)
        stopped = dataclasses.replace(
            result, status=records.STATUS_STOPPED,
            failure_reason=(f"stopped by successive halving at epoch {epoch} of {self.config.train.epochs}: reward "
                            f"{reward:.4f} below the cutoff {cutoff:.4f} (top {top} of {len(rung_rewards)} at this "
                            "rung)"),
        )
        studies.record_stopped(self.study, trial, stopped, normalized_step_time=normalized_step_time,
                               normalized_parameters=normalized_parameters, reward=reward)
        del self.pending[number]
        self._rung_records.pop(number)
        if number not in self._timed_early:
            self._cache(spec, stopped, baseline=False)
        self._timed_early.discard(number)
        self.finished += 1
        self.completed += 1
        self._report(number, spec, stopped, reward, baseline=False)
        return False

    def _next_trial(self) -> Proposal | None:
        if self._stopping() or self.finished + len(self.pending) >= self.config.trials:
            return None
        measuring_baseline = studies.baseline(self.study) is None
        if measuring_baseline and self.pending:
            return None  # candidates wait for the baseline's S and P
        if not self._enqueue_fixed_trial(measuring_baseline) and self._space_exhausted():
            print(f"search space exhausted: all {self.space.size:,} architectures of {self.space.name!r} are in the "
                  f"study; stopping at {self.finished}/{self.config.trials} finished trials", file=self.out, flush=True)
            self.exhausted = True
            return None
        trial = self.study.ask(fixed_distributions=self._distributions)
        self._trial_count += 1
        spec = self.space.from_params(trial.params)
        if measuring_baseline:
            role = records.ROLE_BASELINE
            spec = dataclasses.replace(spec, name=self.space.baseline.name)
        else:
            role = trial.user_attrs.get(records.ROLE, records.ROLE_CANDIDATE)
        studies.record_start(trial, role, spec, self.config.controller)
        self.pending[trial.number] = (trial, spec)
        self.progress.trial_started(trial.number)
        return Proposal(trial.number, spec, self._plan(spec, measuring_baseline))

    def _plan(self, spec: ArchSpec, measuring_baseline: bool) -> TrialPlan:
        """The baseline times itself alone; a candidate is timed against the baseline, unless the cache has it."""
        if measuring_baseline:
            return TrialPlan(self.timing, rungs=self._rungs)
        reference = studies.baseline(self.study)
        cached = None
        if reference is not None and reference.device is not None:
            cached = self.cache.get(self._cache_key(spec, reference.device, self.timing.to_dict()))
        return TrialPlan(
            self.timing,
            reference=self.space.baseline,
            reference_parameters=None if reference is None else reference.parameters,
            cached=cached,
            max_step_time_ratio=self.config.max_step_time_ratio,
            max_params_ratio=self.config.max_params_ratio,
            rungs=self._rungs,
        )

    @property
    def _rungs(self) -> tuple[int, ...]:
        """The epochs successive halving judges every trial at; none without it."""
        scheduler = self.config.scheduler
        if not scheduler.enabled:
            return ()
        return rung_epochs(scheduler.min_epochs, scheduler.reduction_factor, self.config.train.epochs)

    def _enqueue_fixed_trial(self, measuring_baseline: bool) -> bool:
        """Puts the baseline, or the oldest interrupted trial owed a re-run, in line just before it is asked for,
        so that a stopped campaign never leaves a WAITING trial behind. A WAITING trial an older version left in
        the study goes first, as Optuna's ask takes it. Returns whether the next trial is a fixed one."""
        if self._waiting:
            self._waiting -= 1  # Optuna's ask takes it
            return True
        if measuring_baseline:
            studies.enqueue_baseline(self.study, self.space.to_params(self.space.baseline))
            return True
        if self._reruns:
            studies.enqueue_rerun(self.study, self._reruns.pop(0))
            return True
        return False

    def _space_exhausted(self) -> bool:
        """Whether the controller's next trial could only repeat an architecture; counted only once the study holds
        as many trials as the space has architectures (the tiny spaces of tests and demos), so a large space costs
        no read of the study."""
        return self.exhausted or (self._trial_count >= self.space.size and space_exhausted(self.study, self.space))

    def _record(self, number: int, result: EvalResult | None, node: str | None) -> None:
        if number not in self.pending:
            return
        trial, spec = self.pending.pop(number)
        self._rung_records.pop(number, None)
        frozen = studies.current_trial(self.study, trial)
        if frozen.state != optuna.trial.TrialState.RUNNING:
            print(f"trial {number}: result not recorded: another driver ended the trial after this one lost "
                  "the study's lock", file=self.out, flush=True)
            return
        if result is None:
            self._interrupt(trial, frozen, "the trial's worker failed")
            return
        if result.status == records.STATUS_FAULT:
            self._interrupt(trial, frozen, result.failure_reason or "the machinery failed", machinery=True)
            return
        if node is not None:
            studies.record_node(trial, node)
        try:
            reward = studies.record_result(self.study, trial, spec, result, self.exponents)
        except ValueError as error:
            # A result the reward refuses (a non-finite S, say) is the machinery's; its trial never stays RUNNING.
            self._interrupt(trial, frozen, f"its result could not be recorded: {error}", machinery=True)
            return
        baseline = is_baseline(trial.user_attrs)
        if number not in self._timed_early:
            self._cache(spec, result, baseline=baseline)
        self._timed_early.discard(number)
        self.finished += 1
        self.completed += 1
        if reward is not None and (self.best is None or reward > self.best[0]):
            self.best = (reward, number)
        if baseline and not result.ok:
            self.baseline_failure = result.failure_reason
        self._report(number, spec, result, reward, baseline=baseline)

    def _interrupt(self, trial: optuna.trial.Trial, frozen: optuna.trial.FrozenTrial, reason: str, *,
                   machinery: bool = False) -> None:
        """Ends a trial that its worker or the ``machinery`` failed (not the candidate: no FAIL, nothing learned)
        as interrupted, owed one re-run; a machinery fault (a result of status ``fault``) also stops the
        campaign."""
        number = trial.number
        studies.mark_interrupted(self.study, frozen, reason=reason)
        self.progress.trial_ended(number)
        self._forget_rung_rewards(_lineage(frozen.user_attrs, number))
        frozen = studies.current_trial(self.study, trial)
        if studies.may_rerun(frozen):
            self._reruns.append(frozen)
        again = "; it runs once more" if studies.may_rerun(frozen) else ""
        if not machinery:
            print(f"trial {number}: worker failed{again}", file=self.out, flush=True)
            return
        print(f"trial {number}: interrupted, not the candidate's fault: {reason}{again}", file=self.out, flush=True)
        if self.machinery_failure is None:
            self.machinery_failure = f"trial {number}: {reason}"

    def _forget_rung_rewards(self, lineage: int) -> None:
        """An interrupted trial's rung rewards stop counting (as when a campaign resumes); its re-run reports them
        again."""
        for rewards in self._rung_rewards.values():
            rewards.pop(lineage, None)

    def _cache(self, spec: ArchSpec, result: EvalResult, *, baseline: bool) -> None:
        """Keeps a candidate's new S/S0 measurement for any later trial of this architecture."""
        if baseline or result.timing_cached or result.step_time_ratio is None or result.device is None:
            return
        self.cache.put(self._cache_key(spec, result.device, result.timing or {}), result.to_dict())

    def _cache_key(self, spec: ArchSpec, device: str, timing: Mapping[str, Any]) -> str:
        """The step-time cache's key of ``spec`` against the baseline, for this campaign's data and recipe."""
        if self._network_io is None:
            raise RuntimeError("Campaign.start() tells the data's classes and channels before any trial is planned")
        return cache_key(spec, self.space.baseline, **self._network_io, device=device, timing=timing,
                         recipe=self.config.train.to_dict())

    def _report(
        self, number: int, spec: ArchSpec, result: EvalResult, reward: float | None, *, baseline: bool
    ) -> None:
        """One line per finished trial: what it measured (S/S0 first: a candidate's own step time in ms is taken
        beside its re-timed baseline, so only the ratio compares across trials), how long it took, the best so far,
        and the campaign's elapsed time and estimate."""
        best_text = f"best {self.best[0]:.4f} (#{self.best[1]})" if self.best is not None else "best -"
        width = len(str(self.config.trials))
        head = f"[{self.finished:>{width}}/{self.config.trials}] trial {number:>3}"
        if result.status == records.STATUS_PRUNED:
            body = f"PRUNED {result.failure_reason}"
        elif result.status == records.STATUS_STOPPED:
            body = f"STOPPED A {result.accuracy:.4f}  P {result.parameters:>10,}  {result.failure_reason}"
        elif reward is None:
            body = f"FAILED {result.failure_reason}"
        else:
            if baseline:
                step = f"S0 {result.step_time_s * 1e3:.2f} ms"
            else:
                step = _step_time_text(result)
            body = f"A {result.accuracy:.4f}  {step}  P {result.parameters:>10,}  reward {reward:.4f}"
        took = self.progress.trial_finished(number)
        timing = "" if took is None else f"  took {format_duration(took)}"
        summary = self.progress.summary(self.config.trials - self.finished)
        print(f"{head}  {body}  {best_text}{timing}  ({summary})  {' '.join(spec.block_strings)}", file=self.out,
              flush=True)
        self.progress.printed()

    def heartbeat(self) -> None:
        """Says which trials run when the campaign printed nothing for a while (:meth:`CampaignProgress.heartbeat`);
        executors call it often, from any thread."""
        line = self.progress.heartbeat()
        if line is not None:
            print(line, file=self.out, flush=True)


def _step_time_text(result: EvalResult) -> str:
    """``S/S0 0.386 ±1.4%``: the ratio with its interval's half-width, ``IMPRECISE`` when its measurement hit the
    time cap (the record keeps why)."""
    if result.step_time_ratio is None:
        return "S/S0 -"
    text = f"S/S0 {result.step_time_ratio:.3f}"
    low, high = result.step_time_ratio_low, result.step_time_ratio_high
    if low is not None and high is not None:
        text += f" ±{records.relative_half_width(result.step_time_ratio, (low, high)):.1%}"
    if result.step_time_stopped_by in records.IMPRECISE:
        text += " IMPRECISE"
    return text


def _lineage(attributes: Mapping[str, Any], number: int) -> int:
    """The trial whose rung decisions a trial carries: a re-run's original, else the trial itself."""
    return attributes.get(records.REQUEUED_FROM, number)


class StopSignal:
    """SIGTERM as a graceful stop. While an executor has set ``graceful`` (Ray Tune's own "end the run"), the
    first signal calls it and the run winds down; otherwise the signal raises :class:`Terminated` in the main
    thread, which ends the trial in flight as interrupted. ``received`` is the signal's number once one came.

    Ray installs its own SIGTERM handler (``sys.exit`` mid-run) when the driver connects, so an executor calls
    :meth:`install` again after starting Ray.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.graceful: Callable[[int, Any], None] | None = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = signum
        if self.graceful is None:
            raise Terminated()
        if first:
            self.graceful(signum, frame)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[StopSignal]:
    """Handles SIGTERM with a :class:`StopSignal` for the block, then restores the previous handler."""
    stop = StopSignal()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    stop.install()
    try:
        yield stop
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def run_campaign(config: CampaignConfig, executor: Executor, *, out: TextIO = sys.stdout) -> CampaignOutcome:
    """Runs (or resumes) the campaign until the study holds ``config.trials`` finished trials.

    The driver holds the study's :class:`~nas.storage.DriverLock` throughout: a second driver on the same study is
    refused with a message naming the first, so trials are never numbered, counted or re-run twice. Raises
    :class:`Terminated` after a SIGTERM (as ``KeyboardInterrupt`` after Ctrl-C), :class:`LockLostError` when the
    lock was lost, and :class:`~nas.storage.StudyError` for a storage that cannot be written (a read-only or
    damaged database, a full disk), always with the lock released where possible.
    """
    space = presets.get_space(config.space)
    done = _budget_met(config, space)
    if done is not None:  # before a Ray node starts or the lock is taken: a finished campaign's resume answers at once
        return _outcome(config, done, ran=0, recovered=())
    executor.prepare(config)
    try:
        storage = make_storage(config.storage_url)
        lock = DriverLock(storage, config.study)
        with _sigterm_as_interrupt() as stop, storage_errors(config.storage_url, "write to"):
            lock.acquire()
            try:
                outcome = _run_locked(config, space, storage, lock, out, executor, stop)
            except BaseException:
                with contextlib.suppress(StudyError):  # the error under way says more (a full disk, say)
                    lock.release()
                raise
            lock.release()
    finally:
        executor.close()
    if lock.lost:
        raise LockLostError(f"{lock.lost_reason}. This driver started no trial after that and recorded those in "
                            "flight; run the same command to resume once the storage is reachable")
    return outcome


def _run_locked(
    config: CampaignConfig,
    space: SearchSpace,
    storage: optuna.storages.BaseStorage,
    lock: DriverLock,
    out: TextIO,
    executor: Executor,
    stop: StopSignal,
) -> CampaignOutcome:
    sampler = make_sampler(config.controller, space, seed=config.seed, budget=config.trials)
    study = studies.open_study(config.study_settings(), space, sampler, storage=storage)
    recovered = tuple(studies.recover_interrupted(study))
    if recovered:
        print(f"recovered interrupted trial(s) {list(recovered)}: marked FAIL (interrupted); each runs once more",
              file=out)
    if len(studies.finished_trials(study)) >= config.trials:
        return _outcome(config, study, ran=0, recovered=recovered)  # (the caller says so: nothing ran)
    campaign = Campaign(study, space, config, out=out, lock=lock)
    try:
        executor.run(campaign, stop)
    finally:
        if campaign.storage_failure is None:
            campaign.interrupt_pending("campaign stopped")  # (a failed storage leaves them RUNNING: resume recovers)
    if campaign.storage_failure is not None:
        raise campaign.storage_failure
    if stop.received is not None:
        raise Terminated()
    if campaign.machinery_failure is not None:
        raise MachineryError(f"{campaign.machinery_failure}. Not the candidate's fault: the trial is marked interrupted "
                             "and runs again on resume; fix the cause, then run the same command")
    if campaign.baseline_failure is not None:
        raise StudyError(f"the baseline failed, so no reward can be computed: {campaign.baseline_failure}")
    return _outcome(config, study, ran=campaign.completed, recovered=recovered, exhausted=campaign.exhausted)


def _budget_met(config: CampaignConfig, space: SearchSpace) -> optuna.Study | None:
    """The campaign's study, read-only, when it already holds the budget with nothing left in flight and was made
    with these settings (else None: the campaign opens it as usual and refuses or recovers what it must)."""
    try:
        study = studies.load_study(config.storage_url, config.study)
    except StudyError:  # no study yet (or unreadable: the campaign's own opening says why)
        return None
    if (len(studies.finished_trials(study)) < config.trials
            or study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            or studies.settings_differences(study.user_attrs, space, config.study_settings())):
        return None
    return study


def _outcome(
    config: CampaignConfig, study: optuna.Study, *, ran: int, recovered: tuple[int, ...], exhausted: bool = False
) -> CampaignOutcome:
    best = best_trials(study, 1)
    return CampaignOutcome(
        study_name=config.study,
        storage=config.storage_url,
        finished=len(studies.finished_trials(study)),
        budget=config.trials,
        ran=ran,
        best_trial=best[0].number if best else None,
        best_reward=best[0].value if best else None,
        best_spec=(studies.exported_spec(study, best[0], name=trial_spec_name(config.study, best[0].number))
                   if best else None),
        recovered=recovered,
        exhausted=exhausted,
    )
