"""Proxy training: train a candidate briefly at reduced image size and measure what the reward needs.

``train_and_evaluate(spec, data, config) -> EvalResult`` knows nothing of Ray or Optuna. It never raises into a
campaign: out-of-memory, a non-finite loss or any other exception ends as a failed result with the reason, and the
memory the trial used is released before it returns.

Problems a caller can see before any work (:func:`check_data`, :func:`read_checkpoint`) are public checks, so
that ``nas train`` refuses them with a one-line usage error before data reaches the device, while a campaign gets
them as failed results. Every file a run writes (checkpoints, weights) goes through
:func:`~search_spaces.files.write_file`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nas.augment import mixup
from nas.builder import build_model
from nas.data import AUGMENTATIONS, DeviceBatches, ImageData
from nas.measure import (
    StepTiming,
    count_parameters,
    describe_device,
    is_out_of_memory,
    peak_memory_bytes,
    prepare_device,
    release_memory,
    reset_peak_memory,
    resolve_device,
    spec_complexity,
    time_step,
)
from nas.progressive import (
    ProgressiveConfig,
    Regularization,
    Stage,
    fixed_schedule,
    progressive_schedule,
    stage_for_epoch,
)
from nas.step import AMP_CHOICES, MAX_BATCH_SIZE, OPTIMIZERS, TrainingStep, make_optimizer, resolve_amp, warmup_cosine
from search_spaces.files import write_file
from search_spaces.spec import MAX_IMAGE_SIZE, ArchSpec, SpecError, StageSpec

STATUS_OK = "ok"
STATUS_FAILED = "failed"
MAX_EPOCHS = 10_000
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1
# (low, high) of the integer settings; the caps refuse absurd values (a typo, a hostile file) before any work.
_INTEGER_RANGES = {
    "epochs": (1, MAX_EPOCHS), "batch_size": (1, MAX_BATCH_SIZE), "eval_batch_size": (1, MAX_BATCH_SIZE),
    "timing_warmup": (1, 1000), "timing_repeats": (1, 1000), "seed": (0, MAX_SEED),
    "bn_recalibration_batches": (0, 10_000),
}
_OPTIONAL_INTEGER_RANGES = {"image_size": (1, MAX_IMAGE_SIZE), "eval_image_size": (1, MAX_IMAGE_SIZE),
                            "threads": (1, MAX_THREADS)}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Proxy-training settings. Defaults follow the paper's search (about 10 epochs) with a CIFAR-style recipe.

    ``image_size`` None trains at the data's resolution; otherwise batches are resized on the device.
    ``amp`` ``auto`` is bfloat16 on CUDA and full precision on CPU. ``threads`` None leaves torch's default.
    ``randaugment_magnitude`` (0-30, 0 off) and ``mixup_alpha`` (0 off) regularize a fixed-size run;
    ``progressive`` instead grows image size, dropout, RandAugment and mixup together over its stages
    (EfficientNetV2 Algorithm 1). ``eval_image_size`` None evaluates at the last training image size.
    ``ema_decay`` (e.g. 0.999) keeps an exponential moving average of the weights, updated every step, and
    evaluates (and saves) it instead of the raw weights.
    ``bn_recalibration_batches``: before evaluation, batch-norm statistics are recomputed as a plain average over
    this many training batches ("precise BN"; 0 keeps the running averages). With the reference momentum (0.01) a
    few hundred proxy steps leave the running averages far from the trained network's statistics, which would
    make hold-out accuracy measure BN lag rather than the architecture.
    """

    epochs: int = 10
    image_size: int | None = None
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    augment: str = "crop_flip"
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    eval_batch_size: int = 512
    eval_image_size: int | None = None
    randaugment_magnitude: float = 0.0
    mixup_alpha: float = 0.0
    progressive: ProgressiveConfig | None = None
    ema_decay: float | None = None
    bn_recalibration_batches: int = 20
    timing_warmup: int = 5
    timing_repeats: int = 7

    def __post_init__(self) -> None:
        if isinstance(self.progressive, Mapping):
            object.__setattr__(self, "progressive", ProgressiveConfig.from_dict(self.progressive))
        if self.progressive is not None and not isinstance(self.progressive, ProgressiveConfig):
            raise ValueError(f"progressive must be a ProgressiveConfig, a mapping or None, got {self.progressive!r}")
        for field, (low, high) in _INTEGER_RANGES.items():
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{field} must be an integer in [{low}, {high}], got {value!r}")
        for field, (low, high) in _OPTIONAL_INTEGER_RANGES.items():
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
            ):
                raise ValueError(f"{field} must be an integer in [{low}, {high}] or None, got {value!r}")
        for field in ("channels_last", "compile"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field} must be true or false, got {getattr(self, field)!r}")
        for field, low, high in (("learning_rate", 0.0, 1e6), ("momentum", 0.0, 1.0),
                                 ("weight_decay", 0.0, 1.0), ("warmup_epochs", 0.0, float(MAX_EPOCHS)),
                                 ("label_smoothing", 0.0, 1.0), ("randaugment_magnitude", 0.0, 30.0),
                                 ("mixup_alpha", 0.0, 100.0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{field} must be a number in [{low}, {high}], got {value!r}")
        if self.ema_decay is not None and (
            isinstance(self.ema_decay, bool) or not isinstance(self.ema_decay, (int, float))
            or not 0 < self.ema_decay < 1
        ):
            raise ValueError(f"ema_decay must be a number in (0, 1) or None, got {self.ema_decay!r}")
        if self.progressive is not None and self.epochs < self.progressive.num_stages:
            raise ValueError(
                f"epochs ({self.epochs}) must be at least progressive.num_stages ({self.progressive.num_stages})"
            )
        for field, allowed in (("optimizer", OPTIMIZERS), ("augment", AUGMENTATIONS), ("amp", AMP_CHOICES)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["progressive"] = None if self.progressive is None else self.progressive.to_dict()
        return data


@dataclass(frozen=True)
class EpochStats:
    """Training progress after one epoch (accuracy on the augmented training batches, not the hold-out)."""

    epoch: int
    epochs: int
    loss: float
    train_accuracy: float
    images_per_second: float
    image_size: int | None = None


@dataclass(frozen=True)
class EvalResult:
    """What one proxy evaluation measured. A failed result keeps whatever was measured before the failure."""

    status: str
    failure_reason: str | None = None
    accuracy: float | None = None
    final_loss: float | None = None
    step_time: float | None = None
    step_time_iqr: float | None = None
    images_per_second: float | None = None
    parameters: int | None = None
    macs: int | None = None
    peak_memory_bytes: int | None = None
    wall_time: float | None = None
    device: str | None = None
    epochs_completed: int = 0
    history: tuple[EpochStats, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite."""


def train_and_evaluate(
    spec: ArchSpec,
    data: ImageData,
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    weights: Path | None = None,
) -> EvalResult:
    """Trains ``spec`` on ``data`` for ``config.epochs`` and measures hold-out accuracy, step time and size.

    The step time is measured first, on a separately built copy of the network with the same training step,
    so that the adaptive number of timed steps cannot change the training run; training is then seeded afresh,
    which makes a CPU run deterministic for a given seed.

    With ``checkpoint``, the whole training state (weights, optimizer, schedule, EMA, random generators, the
    batch stream's position) is written there after every epoch; ``resume`` continues from it, reaching the
    same final weights as an uninterrupted run; a missing checkpoint, a file that is not one, or one of another
    spec, recipe or data is a failed result before step timing. The caller guards ``checkpoint`` against a second
    process (``nas train`` holds a :class:`~search_spaces.files.FileLock` on it). ``weights`` receives the final
    state dict (the EMA's when on). Missing parent directories of both are created.
    """
    measured: dict[str, Any] = {}
    start = time.perf_counter()
    device = torch.device("cpu")
    try:
        device = resolve_device(config.device)
        measured["device"] = describe_device(device)
        _run(spec, data, config, device, measured, on_epoch, checkpoint, resume, weights)
        status, reason = STATUS_OK, None
    except NonFiniteLossError as error:
        status, reason = STATUS_FAILED, f"non-finite loss: {error}"
    except Exception as error:  # a failing candidate must never end the campaign
        status, reason = STATUS_FAILED, _failure_reason(error)
    release_memory(device)
    return EvalResult(status=status, failure_reason=reason, wall_time=time.perf_counter() - start, **measured)


def _failure_reason(error: Exception) -> str:
    """The recorded reason of a failed run; the CPU allocator's failure is an out-of-memory like CUDA's."""
    if is_out_of_memory(error):
        return f"out of memory: {_first_line(error)}"
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def _run(
    spec: ArchSpec,
    data: ImageData,
    config: TrainConfig,
    device: torch.device,
    measured: dict[str, Any],
    on_epoch: Callable[[EpochStats], None] | None,
    checkpoint: Path | None = None,
    resume: bool = False,
    weights: Path | None = None,
) -> None:
    """The body of :func:`train_and_evaluate`; fills ``measured`` as it goes so a failure keeps what was measured."""
    check_data(spec, config, data)
    saved = None
    if resume:
        if checkpoint is None:
            raise ValueError("resume needs a checkpoint to resume from")
        saved = read_checkpoint(checkpoint, spec, config)
        check_checkpoint_data(saved, checkpoint, spec, data)
    for output in (checkpoint, weights):
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
    prepare_device(device, config.threads)
    image_size = config.image_size or data.image_size
    measured["macs"] = spec_complexity(
        spec, num_classes=data.num_classes, image_size=image_size, in_channels=data.in_channels
    ).macs
    data = data.to(device)
    train_batches = _batches(data.train_images, data.train_labels, data, config, train=True)
    amp_dtype = resolve_amp(config.amp, device)
    reset_peak_memory(device)

    timing = _measure_step_time(spec, data, config, device, amp_dtype, train_batches)
    measured.update(
        step_time=timing.median_s,
        step_time_iqr=timing.iqr_s,
        images_per_second=config.batch_size / timing.median_s,
    )

    torch.manual_seed(config.seed)
    model, step = _model_and_step(spec, data, config, device, amp_dtype, len(train_batches))
    measured["parameters"] = count_parameters(model)
    schedule = training_schedule(spec, config, data.image_size)
    mixing = torch.Generator(device=device).manual_seed(config.seed)
    ema = None
    if config.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    state = TrainingState(spec, config, model, step, ema, train_batches, mixing)
    history: list[EpochStats] = []
    if saved is not None:
        history = state.load(saved, checkpoint)
        measured.update(history=tuple(history), epochs_completed=len(history),
                        final_loss=history[-1].loss if history else None)
    for epoch in range(len(history) + 1, config.epochs + 1):
        stage = stage_for_epoch(schedule, epoch - 1)
        apply_stage(model, train_batches, stage)
        stats = train_epoch(step, train_batches, epoch, config.epochs, mixup_alpha=stage.regularization.mixup_alpha,
                            num_classes=data.num_classes, generator=mixing, ema=ema)
        history.append(stats)
        measured.update(history=tuple(history), epochs_completed=epoch, final_loss=stats.loss)
        if checkpoint is not None:
            state.save(checkpoint, history)
        if on_epoch is not None:
            on_epoch(stats)
    final = model if ema is None else ema.module
    recalibrate_batch_norm(final, train_batches, config.bn_recalibration_batches, amp_dtype)
    eval_config = dataclasses.replace(config, image_size=config.eval_image_size or schedule[-1].image_size)
    measured["accuracy"] = evaluate(final, data, eval_config, amp_dtype)
    if weights is not None:
        _write_torch({k: v.detach().cpu() for k, v in final.state_dict().items()}, weights)
    measured["peak_memory_bytes"] = peak_memory_bytes(device)


def check_data(spec: ArchSpec, config: TrainConfig, data: ImageData) -> None:
    """Refuses data this run cannot train on, before any work: a spec that pins other input channels than the
    data's, or a batch larger than the training split (every epoch would be empty, as batches drop the rest)."""
    if spec.in_channels is not None and spec.in_channels != data.in_channels:
        raise SpecError(
            f"spec {spec.name or '(unnamed)'} pins in_channels {spec.in_channels}, but the data {data.name} has "
            f"{data.in_channels} channel(s): remove in_channels from the spec to follow the data, or use "
            f"{spec.in_channels}-channel data"
        )
    train_images = len(data.train_labels)
    if config.batch_size > train_images:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the training set: {train_images} images of {data.name} "
            f"after the hold-out split; use a batch size of at most {train_images}"
        )


CHECKPOINT_VERSION = 1
_RUN_INDEPENDENT_FIELDS = ("device", "threads")  # a run may resume on another device or thread count
_CHECKPOINT_KEYS = ("version", "spec", "config", "history", "model", "optimizer", "scheduler", "scaler", "ema",
                    "batches", "mixing_rng", "torch_rng", "cuda_rng")


class CheckpointError(ValueError):
    """A checkpoint that cannot continue this run: missing, not written by ``nas train``, or of another spec,
    recipe or data. The message names the file and, for a mismatch, each differing field with both values."""


def _settings(spec: ArchSpec, config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the spec and the recipe, less the run-independent fields."""
    recipe = {k: v for k, v in config.to_dict().items() if k not in _RUN_INDEPENDENT_FIELDS}
    return {"spec": spec.to_dict(), "config": recipe}


def read_checkpoint(path: Path, spec: ArchSpec, config: TrainConfig) -> dict[str, Any]:
    """Reads the checkpoint at ``path`` and checks that it continues a run of ``spec`` with ``config``.

    Cheap enough to call before loading data: tensors are memory-mapped, not read. Refuses, with a
    :class:`CheckpointError`, a missing file, a file that is not a ``nas train`` checkpoint (random bytes, a
    truncated file, a weights file or any other torch file), and a checkpoint of another spec or recipe, naming
    every differing field with its value in the checkpoint and now. Returns the state for :meth:`TrainingState.load`.
    """
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; run without --resume to start")
    not_ours = f"{path} is not a checkpoint written by nas train"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except OSError:
        raise  # unreadable (permissions, I/O): the operating system's message says why
    except Exception:  # torch raises many types for a foreign file (UnpicklingError, RuntimeError, ...)
        raise CheckpointError(f"{not_ours} (not a readable torch file: damaged, truncated or another kind)") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{not_ours} (it holds a {type(state).__name__}, not a training state)")
    missing = [key for key in _CHECKPOINT_KEYS if key not in state]
    if missing and state and all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"{not_ours} (it holds network weights only, like --save's weights.pt)")
    if missing:
        raise CheckpointError(f"{not_ours} (it lacks {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is checkpoint version {state['version']!r}; this nas train resumes version "
                              f"{CHECKPOINT_VERSION} only: run without --resume to start")
    well_formed = (
        isinstance(state["spec"], dict) and isinstance(state["config"], dict)
        and isinstance(state["model"], dict) and all(isinstance(v, torch.Tensor) for v in state["model"].values())
        and isinstance(state["history"], list) and all(isinstance(stats, dict) for stats in state["history"])
    )
    if not well_formed:
        raise CheckpointError(f"{not_ours} (its spec, config, model or history has the wrong type)")
    differences = _differences(state, _settings(spec, config))
    if differences:
        raise CheckpointError(f"{path} was written for another run: {'; '.join(differences)}; resume with the same "
                              "spec and settings, or run without --resume to start")
    return state


def _differences(state: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """``spec FIELD A in the checkpoint, B now`` for every spec and recipe field that differs (stages by stage)."""
    differences = []
    for part in ("spec", "config"):
        saved, current = state[part], expected[part]
        for field in dict.fromkeys([*current, *saved]):
            old, new = saved.get(field, "unset"), current.get(field, "unset")
            if old == new:
                continue
            if field == "stages" and isinstance(old, list) and len(old) == len(new):
                differences += [f"spec stage {index} {_stage_text(a)} in the checkpoint, {_stage_text(b)} now"
                                for index, (a, b) in enumerate(zip(old, new), start=1) if a != b]
            elif field == "stages":
                old_text = " ".join(map(_stage_text, old)) if isinstance(old, list) else repr(old)
                differences.append(f"spec stages [{old_text}] in the checkpoint, "
                                   f"[{' '.join(map(_stage_text, new))}] now")
            else:
                differences.append(f"{part} {field} {old!r} in the checkpoint, {new!r} now")
    return differences


def _stage_text(stage: Any) -> str:
    """A stage as its block string, or as written when it is not a valid stage."""
    try:
        return StageSpec.from_dict(stage).block_string
    except SpecError:
        return repr(stage)


def check_checkpoint_data(state: Mapping[str, Any], path: Path, spec: ArchSpec, data: ImageData) -> None:
    """Refuses a checkpoint whose network does not fit ``data`` (another number of input channels or classes),
    naming the differing tensors' shapes; the network is built on the meta device, without memory."""
    with torch.device("meta"):
        model = build_model(spec, data.num_classes, data.in_channels)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    saved = {name: tuple(tensor.shape) for name, tensor in state["model"].items()}
    differing = [name for name in dict.fromkeys([*expected, *saved]) if expected.get(name) != saved.get(name)]
    if differing:
        shown = "; ".join(f"{name} {saved.get(name, 'absent')} in the checkpoint, {expected.get(name, 'absent')} now"
                          for name in differing[:3])
        raise CheckpointError(
            f"{path} was written for other data: {shown} (the data {data.name} has {data.in_channels} channel(s) "
            f"and {data.num_classes} classes); resume with the same data, or run without --resume to start"
        )


class TrainingState:
    """Everything a run needs to continue exactly where it stopped, saved to and loaded from one file."""

    def __init__(self, spec: ArchSpec, config: TrainConfig, model: torch.nn.Module, step: TrainingStep,
                 ema: AveragedModel | None, batches: DeviceBatches, mixing: torch.Generator) -> None:
        self.spec, self.config, self.model, self.step = spec, config, model, step
        self.ema, self.batches, self.mixing = ema, batches, mixing

    def save(self, path: Path, history: list[EpochStats]) -> None:
        device = next(self.model.parameters()).device
        state = {
            "version": CHECKPOINT_VERSION,
            **_settings(self.spec, self.config),
            "history": [dataclasses.asdict(stats) for stats in history],
            "model": self.model.state_dict(),
            "optimizer": self.step.optimizer.state_dict(),
            "scheduler": self.step.scheduler.state_dict() if self.step.scheduler is not None else None,
            "scaler": self.step.scaler.state_dict() if self.step.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "batches": self.batches.state_dict(),
            "mixing_rng": self.mixing.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }
        _write_torch(state, path)

    def load(self, state: Mapping[str, Any], path: Path) -> list[EpochStats]:
        """Restores ``state``, as :func:`read_checkpoint` returned it from ``path``; returns the epochs done."""
        device = next(self.model.parameters()).device
        try:
            self.model.load_state_dict(state["model"])
            self.step.optimizer.load_state_dict(state["optimizer"])
            if self.step.scheduler is not None:
                self.step.scheduler.load_state_dict(state["scheduler"])
            if self.step.scaler is not None:
                self.step.scaler.load_state_dict(state["scaler"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            self.batches.load_state_dict(state["batches"])
            self.mixing.set_state(state["mixing_rng"].cpu())
            torch.set_rng_state(state["torch_rng"].cpu())
            if state["cuda_rng"] is not None and device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
            return [EpochStats(**stats) for stats in state["history"]]
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
            if is_out_of_memory(error):
                raise
            raise CheckpointError(f"{path} is not a checkpoint written by nas train ({_first_line(error)})") from None


def _write_torch(value: Any, path: Path) -> None:
    """``torch.save`` through :func:`~search_spaces.files.write_file`: a kill mid-write leaves the previous file."""
    write_file(path, lambda file: torch.save(value, file))


def training_schedule(spec: ArchSpec, config: TrainConfig, data_image_size: int) -> tuple[Stage, ...]:
    """The stages of a run: Algorithm 1's with ``config.progressive``, else one stage with fixed settings."""
    if config.progressive is not None:
        return progressive_schedule(config.progressive, config.epochs)
    regularization = Regularization(
        dropout=spec.dropout, randaugment_magnitude=config.randaugment_magnitude, mixup_alpha=config.mixup_alpha
    )
    return fixed_schedule(config.image_size or data_image_size, regularization, config.epochs)


def apply_stage(model: torch.nn.Module, batches: DeviceBatches, stage: Stage) -> None:
    """Sets a stage's image size, RandAugment magnitude and dropout; the weights carry over between stages."""
    batches.image_size = stage.image_size
    batches.randaugment_magnitude = stage.regularization.randaugment_magnitude
    model.dropout.p = stage.regularization.dropout


def _batches(
    images: torch.Tensor, labels: torch.Tensor, data: ImageData, config: TrainConfig, *, train: bool
) -> DeviceBatches:
    return DeviceBatches(
        images,
        labels,
        batch_size=config.batch_size if train else config.eval_batch_size,
        mean=data.mean,
        std=data.std,
        augment=config.augment if train else "none",
        image_size=config.image_size,
        shuffle=train,
        drop_last=train,
        channels_last=config.channels_last,
        seed=config.seed,
    )


def _model_and_step(
    spec: ArchSpec,
    data: ImageData,
    config: TrainConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    steps_per_epoch: int,
) -> tuple[torch.nn.Module, TrainingStep]:
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = build_model(spec, data.num_classes, data.in_channels).to(device=device, memory_format=memory_format)
    optimizer = make_optimizer(
        model,
        name=config.optimizer,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
    )
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(total_steps, max(1, round(config.warmup_epochs * steps_per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps))
    runnable = torch.compile(model) if config.compile else model
    step = TrainingStep(
        runnable, optimizer, amp_dtype=amp_dtype, label_smoothing=config.label_smoothing, scheduler=scheduler
    )
    return model, step


def _measure_step_time(
    spec: ArchSpec,
    data: ImageData,
    config: TrainConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    train_batches: DeviceBatches,
) -> StepTiming:
    """Step time S with the one protocol, on a throw-away copy of the network and one real training batch."""

    def time_copy() -> StepTiming:
        model, step = _model_and_step(spec, data, config, device, amp_dtype, steps_per_epoch=1)
        images, labels = next(iter(train_batches))
        return time_step(
            lambda: step(images, labels), device, warmup=config.timing_warmup, repeats=config.timing_repeats
        )

    try:
        return time_copy()
    finally:
        release_memory(device)  # the copy went with time_copy's frame


def train_epoch(
    step: TrainingStep,
    batches: DeviceBatches,
    epoch: int,
    epochs: int,
    *,
    mixup_alpha: float = 0.0,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
    ema: AveragedModel | None = None,
) -> EpochStats:
    """One pass over the training batches (mixed up when ``mixup_alpha`` > 0); reads the device once, at the end."""
    start = time.perf_counter()
    total_loss = torch.zeros((), device=step.optimizer.param_groups[0]["params"][0].device)
    total_correct = torch.zeros((), dtype=torch.int64, device=total_loss.device)
    seen = 0
    for images, labels in batches:
        if mixup_alpha > 0:
            mixed = mixup(images, labels, alpha=mixup_alpha, num_classes=num_classes, generator=generator)
            images, labels = mixed.images, mixed.targets
        loss, correct = step(images, labels)
        if ema is not None:
            ema.update_parameters(step.model)
        total_loss += loss
        total_correct += correct
        seen += labels.shape[0]
    mean_loss = total_loss.item() / len(batches)
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(f"mean training loss of epoch {epoch} is {mean_loss}")
    return EpochStats(
        epoch=epoch,
        epochs=epochs,
        loss=mean_loss,
        train_accuracy=total_correct.item() / seen,
        images_per_second=seen / (time.perf_counter() - start),
        image_size=batches.image_size,
    )


@torch.no_grad()
def recalibrate_batch_norm(
    model: torch.nn.Module, batches: DeviceBatches, num_batches: int, amp_dtype: torch.dtype | None
) -> None:
    """Replaces batch-norm running statistics by their plain average over ``num_batches`` training batches."""
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    if num_batches == 0 or not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every batch weighs the same
    device = next(model.parameters()).device
    model.train()
    for index, (images, _) in enumerate(batches):
        if index == num_batches:
            break
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(images)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: ImageData, config: TrainConfig, amp_dtype: torch.dtype | None) -> float:
    """Top-1 accuracy on the hold-out split (never the test set), at the training resolution."""
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for images, labels in _batches(data.val_images, data.val_labels, data, config, train=False):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        correct += (logits.argmax(dim=1) == labels).sum()
    model.train()
    return correct.item() / len(data.val_labels)
