"""The trial record: what an evaluation measured, and the study attributes it becomes.

This is the only code that turns a result into Optuna attributes and back, and the one place that names the
attributes a study and its trials hold, so a reader (the CLI, the report, a controller, Optuna's own dashboard)
and a writer never disagree on a key. One name per quantity, with its unit in the name (``step_time_s``).

Adding a measured field is one change here (a field of :class:`EvalResult`) plus the code that measures it: it is
then recorded on every trial, travels from a Ray worker and reads back with the rest.

Imports no torch, no Ray and no Optuna: a worker builds an :class:`EvalResult` and the driver records it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from search_spaces.spec import ArchSpec

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_PRUNED = "pruned"  # over a campaign constraint (max_step_time_ratio, max_params_ratio): stopped before training
STATUS_STOPPED = "stopped"  # stopped at a rung by successive halving (nas.halving): behind the others there
#: Not the candidate's: the machinery failed while it was timed or trained (the timing lock, the storage, the disk, a
#: device that is gone; nas.train.machinery_fault is the rule). The trial is interrupted, never FAIL, and the
#: campaign stops so the fault can be fixed; it runs again on resume.
STATUS_FAULT = "fault"

# --- trial attributes -------------------------------------------------------------------------------------------
ROLE = "role"  # ROLE_BASELINE or ROLE_CANDIDATE
ROLE_BASELINE = "baseline"
ROLE_CANDIDATE = "candidate"
SPEC = "spec"  # the evaluated ArchSpec as a dict
BLOCK_STRINGS = "block_strings"  # one short string per stage, for tables
CONTROLLER = "controller"
RAY_NODE = "ray_node"  # the id of the Ray node the trial ran on
INTERRUPTED = "interrupted"  # True on a FAIL the candidate did not cause (a stopped driver, a dead worker)
REQUEUED_FROM = "requeued_from"  # on a re-run: the number of the interrupted trial it repeats
STATUS = "status"  # STATUS_OK, STATUS_FAILED, STATUS_PRUNED, STATUS_STOPPED or STATUS_FAULT (EvalResult.status)
RUNGS = "rungs"  # successive halving: [{epoch, accuracy, reward, promoted}, ...] in the order the rungs were reached
EPOCHS_COMPLETED = "epochs_completed"  # EvalResult.epochs_completed as result_attributes records it: epochs trained
STOPPED_AT_EPOCH = "stopped_at_epoch"  # on a trial successive halving stopped: the rung (epochs trained) it stopped at
FAILURE_REASON = "failure_reason"
LOSS_HISTORY = "loss_history"  # the training loss after each epoch
NORMALIZED_STEP_TIME = "normalized_step_time"  # S / S_baseline
NORMALIZED_PARAMETERS = "normalized_parameters"  # P / P_baseline
REWARD = "reward"
# the measured quantities (EvalResult's fields of the same names)
ACCURACY = "accuracy"
STEP_TIME_S = "step_time_s"
STEP_TIME_IQR_S = "step_time_iqr_s"  # the interquartile range of the timed windows whose median is STEP_TIME_S
STEP_TIME_RATIO = "step_time_ratio"  # S/S0 from interleaved windows of the trial and the baseline (nas.timing)
STEP_TIME_RATIO_IQR = "step_time_ratio_iqr"  # the interquartile range of the per-pair ratios
STEP_TIME_RATIO_LOW = "step_time_ratio_low"  # S/S0's 95% interval (nas.timing.median_interval): its lower end
STEP_TIME_RATIO_HIGH = "step_time_ratio_high"  # ... and its upper end
STEP_TIME_PAIRS = "step_time_pairs"  # the pairs of windows S/S0 was estimated from
STEP_TIME_DISCARDED_PAIRS = "step_time_discarded_pairs"  # pairs timed under CPU contention and left out
STEP_TIME_MEASURE_S = "step_time_measure_s"  # the seconds the S/S0 measurement took (builds, warm-ups, windows)
STEP_TIME_STOPPED_BY = "step_time_stopped_by"  # why it ended: one of STOPPED_BY
#: Why an S/S0 measurement ended (nas.timing.paired_ratio): its interval reached the precision asked for; the
#: fixed number of pairs asked for was timed; the time cap came first; the cap came and every pair had been taken
#: under CPU contention (the ratio is from contended pairs). The last two are IMPRECISE.
STOPPED_BY = ("precision", "pairs", "cap", "contention")
IMPRECISE = ("cap", "contention")
REFERENCE_STEP_TIME_S = "reference_step_time_s"  # the baseline's step time re-timed beside the trial's (its S/S0's S0)
TIMING = "timing"  # the settings S was timed at (TimingConfig.to_dict(), resolved)
TIMING_CACHED = "timing_cached"  # S/S0 came from the step-time cache, not from timing in this trial
PARAMETERS = "parameters"
MACS = "macs"
DEVICE = "device"
WALL_TIME_S = "wall_time_s"

# --- study attributes -------------------------------------------------------------------------------------------
FORMAT_VERSION_KEY = "format_version"
SPACE = "space"  # the SearchSpace as a dict
SPACE_NAME = "space_name"
SPACE_FINGERPRINT = "space_fingerprint"
PROXY = "proxy"  # CampaignConfig.proxy_settings(): what a trial's numbers depend on
RECIPE = "recipe"  # the proxy recipe as resolved for the campaign's data (study) or as a trial ran it (trial)
CAMPAIGN = "campaign"  # the last run's CampaignConfig as a dict
BASELINE = "baseline"  # a Baseline as a dict, once the baseline trial completed
EXPORTED_SPEC = "exported_spec"  # the absolute path nas search last wrote the best trial's spec to
NETWORK_IO = "network_io"  # {"num_classes": K, "in_channels": C}: the searched data's, which exported specs carry
HOLDOUT_IMAGES = "holdout_images"  # the hold-out images every trial's accuracy is counted on (the report's noise)
FORMAT_VERSION = 1

# Keys of studies written before the units were in the names; read as their new names.
_LEGACY_KEYS = {"step_time": "step_time_s", "step_time_iqr": "step_time_iqr_s", "wall_time": "wall_time_s"}


@dataclass(frozen=True)
class EpochStats:
    """Training progress after one epoch: accuracy on the augmented training batches, and ``eval_accuracy`` on the
    evaluation images when the run evaluates after every epoch (``nas train --eval-data``), else None."""

    epoch: int
    epochs: int
    loss: float
    train_accuracy: float
    images_per_second: float
    image_size: int | None = None
    eval_accuracy: float | None = None


def relative_half_width(ratio: float, interval: tuple[float, float] | None) -> float | None:
    """Half the width of S/S0's interval as a share of S/S0 (what a trial line shows as ``±``): 0.98-1.02
    around 1.0 is 0.02; None without an interval."""
    if interval is None:
        return None
    low, high = interval
    return (high - low) / (2 * ratio)


@dataclass(frozen=True)
class EvalResult:
    """What one proxy evaluation measured. A failed, pruned or stopped result keeps whatever was measured before it
    ended (a result stopped at a rung: that rung's accuracy, history and ``epochs_completed``).

    In a campaign, ``step_time_s`` is the step time at the campaign's timing settings (``timing``), and
    ``step_time_ratio`` is S/S0 estimated from windows interleaved with the baseline's (:mod:`nas.timing`), with
    ``reference_step_time_s`` the baseline's step time in those windows; the reward uses the ratio. The
    ``step_time_`` fields after it say how precise it is (:class:`nas.timing.RelativeStepTime`).
    """

    status: str
    failure_reason: str | None = None
    accuracy: float | None = None
    final_loss: float | None = None
    step_time_s: float | None = None
    step_time_iqr_s: float | None = None
    images_per_second: float | None = None
    step_time_ratio: float | None = None
    step_time_ratio_iqr: float | None = None
    step_time_ratio_low: float | None = None
    step_time_ratio_high: float | None = None
    step_time_pairs: int | None = None
    step_time_discarded_pairs: int | None = None
    step_time_measure_s: float | None = None
    step_time_stopped_by: str | None = None
    reference_step_time_s: float | None = None
    timing: dict[str, Any] | None = None
    timing_cached: bool | None = None  # None: this result timed nothing
    recipe: dict[str, Any] | None = None  # the proxy recipe as run, its automatic settings resolved
    parameters: int | None = None
    macs: int | None = None
    peak_memory_bytes: int | None = None
    wall_time_s: float | None = None
    device: str | None = None
    epochs_completed: int = 0
    history: tuple[EpochStats, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        fields = dict(data)
        fields["history"] = tuple(EpochStats(**epoch) for epoch in fields.get("history", ()))
        return cls(**fields)

    def to_json(self) -> str:
        """The result as JSON text: how it travels from a worker to the driver."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        return cls.from_dict(json.loads(text))


def started_attributes(role: str, spec: ArchSpec, controller: str) -> dict[str, Any]:
    """The attributes a trial gets when it is handed to a worker: its role, architecture and, for a candidate, the
    controller that proposed it (the baseline is the space's backbone, proposed by no controller)."""
    attributes = {ROLE: role, SPEC: spec.to_dict(), BLOCK_STRINGS: list(spec.block_strings)}
    if role != ROLE_BASELINE:
        attributes[CONTROLLER] = controller
    return attributes


def result_attributes(result: EvalResult) -> dict[str, Any]:
    """The trial attributes recording ``result``: every measured field under its own name, the per-epoch
    history as a loss list; missing and NaN values are left out (JSON has no NaN)."""
    data = result.to_dict()
    history = data.pop("history")
    data[LOSS_HISTORY] = [round(epoch["loss"], 6) for epoch in history]
    return {key: value for key, value in data.items() if value is not None and not _is_nan(value)}


def result_from_attributes(attributes: Mapping[str, Any]) -> EvalResult:
    """The :class:`EvalResult` a trial recorded (its history only as far as the recorded losses go)."""
    attributes = _current_keys(attributes)
    names = {field.name for field in dataclasses.fields(EvalResult)} - {"history"}
    return EvalResult(**{key: value for key, value in attributes.items() if key in names})


@dataclass(frozen=True)
class Baseline:
    """The baseline trial's measurements, kept on the study: every reward is normalized by its S and P."""

    trial: int
    step_time_s: float
    parameters: int
    accuracy: float
    macs: int | None
    device: str | None
    block_strings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["block_strings"] = list(self.block_strings)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        data = _current_keys(data)
        return cls(trial=data["trial"], step_time_s=data["step_time_s"], parameters=data["parameters"],
                   accuracy=data["accuracy"], macs=data.get("macs"), device=data.get("device"),
                   block_strings=tuple(data.get("block_strings", ())))


def study_baseline(study_attributes: Mapping[str, Any]) -> Baseline | None:
    """The study's baseline once its trial has completed, else None."""
    data = study_attributes.get(BASELINE)
    return None if data is None else Baseline.from_dict(data)


def _current_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    return {_LEGACY_KEYS.get(key, key): value for key, value in data.items()}


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
