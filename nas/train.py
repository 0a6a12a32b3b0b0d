"""Proxy training: train a candidate briefly at reduced image size and measure what the reward needs.

``train_and_evaluate(spec, data, config) -> EvalResult`` knows nothing of Ray or Optuna. It never raises into a
campaign: out-of-memory, a non-finite loss or any other exception ends as a failed result with the reason, and the
memory the trial used is released before it returns. With successive halving's ``rungs``
(:class:`~nas.halving.Rungs`), it evaluates the weights at each rung epoch and asks the rung's judge whether to
train on, without changing the training run (:func:`evaluate_at_rung`).

Problems a caller can see before any work (:func:`check_data`, :func:`read_checkpoint`) are public checks, so
that ``nas train`` refuses them with a one-line usage error before data reaches the device (:class:`TrainPreflight`
runs them all, in the order that costs least), while a campaign gets them as failed results. A checkpoint to resume
is read once per run (:class:`Checkpoint`). Every file a run writes (checkpoints, weights, and :func:`save_run`'s
spec and result) goes through :func:`~search_spaces.files.write_file`. A saved run says what inference needs: its
spec the classes it was trained for, its ``result.json`` what the network takes (:class:`ModelInput`: image size,
channels, the normalization's mean and std, classes), which an ONNX export carries too (:mod:`nas.onnx_export`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nas.augment import mixup
from nas.builder import build_model
from nas.data import DeviceBatches, ImageData, _derived_seed
from nas.distributed import (
    DataParallel,
    all_gather_objects,
    all_reduce_sum,
    average_buffers,
    convert_batch_norm,
    decided_by_rank_zero,
    rank_seed,
)
from nas.halving import Rungs
from nas.measure import (
    DeviceUnavailableError,
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
    Regularization,
    Stage,
    fixed_schedule,
    progressive_schedule,
    stage_for_epoch,
)
from nas.recipe import AUTOMATIC_FIELDS, TrainConfig, resolve_recipe
from nas.records import STATUS_FAILED, STATUS_FAULT, STATUS_OK, STATUS_STOPPED, EpochStats, EvalResult
from nas.step import TrainingStep, build_training_step
from nas.storage import StudyError
from nas.streaming import StreamingBatches, StreamingFolder
from nas.timing import TimingLockError
from search_spaces.checks import check_int
from search_spaces.files import FileLock, check_output, write_file
from search_spaces.io import dump_spec
from search_spaces.spec import ArchSpec, SpecError, StageSpec


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite."""


def train_and_evaluate(
    spec: ArchSpec,
    data: ImageData,
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_step: Callable[[int, int, int], None] | None = None,
    checkpoint: Checkpoint | None = None,
    weights: Path | None = None,
    rungs: Rungs | None = None,
    evaluate_each_epoch: bool = False,
    parallel: DataParallel | None = None,
) -> EvalResult:
    """Trains ``spec`` on ``data`` for ``config.epochs`` and measures hold-out accuracy, step time and size.

    The network is built (and with ``config.compile`` compiled) once. Its step time is measured first, on the
    training network and step themselves (:func:`time_training_step`), which then return to their initial state,
    so the adaptive number of timed steps cannot change the training run: a CPU run is deterministic for a given
    seed, and the same as it would be without timing.

    With ``checkpoint``, the whole training state (weights, optimizer, schedule, EMA, random generators, the
    batch stream's position) is written to its path after every epoch; with its ``resume`` the run continues from
    it, reaching the same final weights as an uninterrupted run; a missing checkpoint, a file that is not one, or
    one of another spec, recipe or data is a failed result before step timing. A checkpoint the caller already
    read (:class:`TrainPreflight`) is not read again. The caller guards the file against a second process
    (``nas train`` holds a :class:`~search_spaces.files.FileLock` on it). ``weights`` receives the final state
    dict (the EMA's when on). Missing parent directories of both are created.

    With ``rungs``, after each epoch of ``rungs.epochs`` below ``config.epochs`` the current weights (the EMA's
    when on) are evaluated as the final evaluation does (:func:`evaluate_at_rung`, which leaves the training run
    as it was) and ``rungs.judge`` gets that result (status ok, ``epochs_completed`` the rung, the wall time so
    far). When it says False, training stops there: the result is that rung's, with status ``stopped`` and the
    reason, and nothing is written to ``weights``.

    ``on_epoch`` gets each epoch's :class:`EpochStats`; ``on_step(epoch, step, steps)`` is told after each training
    step (both 1-based, of ``steps`` in the epoch), for progress within long epochs: it reads no device value.
    With ``evaluate_each_epoch`` every epoch's stats carry the accuracy on ``data``'s evaluation images, measured as
    a rung's is (:func:`evaluate_at_rung`, which leaves the run as it was): a learning curve on a test set.

    With ``parallel`` (a rank of a data-parallel launch whose process group is joined, :mod:`nas.distributed`)
    every rank calls this with the same arguments: the global batch is shared, gradients averaged, the epoch's
    loss and accuracy and the evaluation counted over all ranks (every rank returns the same result), and rank 0
    alone writes ``checkpoint`` and ``weights``. The checkpoint holds every rank's random generators, so a run
    resumed with the same number of ranks continues exactly; with another number the ranks' own draws (dropout,
    mixup, RandAugment) are seeded afresh from the seed, rank and epoch (:func:`checkpoint_world_size`).
    """
    measured: dict[str, Any] = {}
    start = time.perf_counter()
    device = torch.device("cpu")
    try:
        device = resolve_device(config.device)
        measured["device"] = describe_device(device)
        stopped_at = _run(spec, data, config, device, measured, on_epoch, checkpoint, weights, rungs=rungs,
                          start=start, on_step=on_step, evaluate_each_epoch=evaluate_each_epoch,
                          parallel=parallel or DataParallel())
        status, reason = STATUS_OK, None
        if stopped_at is not None:
            status, reason = STATUS_STOPPED, f"stopped at epoch {stopped_at} of {config.epochs} by its rung's judge"
    except NonFiniteLossError as error:
        status, reason = STATUS_FAILED, f"non-finite loss: {error}"
    except Exception as error:  # a failing candidate must never end the campaign; the machinery's fault may
        status, reason = failed_status(error), failure_reason(error)
    release_memory(device)
    return EvalResult(status=status, failure_reason=reason, wall_time_s=time.perf_counter() - start, **measured)


#: What a failing disk or file system raises: no space, over quota, read-only, an I/O error.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def machinery_fault(error: BaseException) -> bool:
    """Whether ``error``, raised while a candidate was timed or trained, is the machinery's fault rather than the
    candidate's: the one rule (DESIGN.md, "Failures are data, when they are the candidate's"). The timing lock
    (:class:`~nas.timing.TimingLockError`), the storage (:class:`~nas.storage.StudyError`), a failing disk (no
    space, quota, read-only, I/O error) and a device that is gone
    (:class:`~nas.measure.DeviceUnavailableError`) are the machinery's: such a result is :data:`STATUS_FAULT`,
    the trial is interrupted and the campaign stops. Anything else (out of memory, a NaN loss, an error in the
    candidate's own network) is the candidate's, a FAIL with its reason."""
    if isinstance(error, (TimingLockError, StudyError, DeviceUnavailableError)):
        return True
    return isinstance(error, OSError) and error.errno in _DISK_ERRNOS


def failed_status(error: BaseException) -> str:
    """The status of a result that ``error`` ended: :data:`STATUS_FAULT` or :data:`STATUS_FAILED`."""
    return STATUS_FAULT if machinery_fault(error) else STATUS_FAILED


def failure_reason(error: Exception) -> str:
    """The recorded reason of a failed run (or step timing); the CPU allocator's failure is an out-of-memory like
    CUDA's."""
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
    checkpoint: Checkpoint | None = None,
    weights: Path | None = None,
    *,
    rungs: Rungs | None,
    start: float,
    on_step: Callable[[int, int, int], None] | None = None,
    evaluate_each_epoch: bool = False,
    parallel: DataParallel,
) -> int | None:
    """The body of :func:`train_and_evaluate`; fills ``measured`` as it goes so a failure keeps what was measured.
    Returns the rung epoch its judge stopped training at, else None. ``start`` is the run's start on
    :func:`time.perf_counter`, for the wall time of a rung's result."""
    check_data(spec, config, data)
    if rungs is not None and parallel.distributed:
        raise ValueError("successive halving's rungs judge one process's run: a data-parallel run has none")
    saved = None if checkpoint is None else checkpoint.saved(spec, config)
    if saved is not None:
        check_checkpoint_data(saved, checkpoint.path, spec, data)
    for output in (None if checkpoint is None else checkpoint.path, weights):
        if output is not None and parallel.is_main:
            output.parent.mkdir(parents=True, exist_ok=True)
    prepare_device(device, config.threads)
    settings = config  # as given: what a checkpoint records and must match
    config = resolve_recipe(config, train_images=len(data.train_labels), flips=data.flips)
    parallel.share(config.batch_size)
    measured["recipe"] = config.to_dict()
    image_size = config.image_size or data.image_size
    measured["macs"] = spec_complexity(  # on the meta device: no weights, no work
        spec, num_classes=data.num_classes, image_size=image_size, in_channels=data.in_channels
    ).macs
    data = data.to(device)
    train_batches = _batches(data, config, train=True, parallel=parallel)
    reset_peak_memory(device)

    torch.manual_seed(config.seed)
    model = build_model(spec, data.num_classes, data.in_channels)  # the run's one build of the network: every rank's
    if parallel.distributed:
        if parallel.sync_batch_norm:
            model = convert_batch_norm(model, device)
        if parallel.rank > 0:  # each rank's own dropout and stochastic depth; rank 0 goes on as one process does
            torch.manual_seed(rank_seed(config.seed, parallel))
    step = build_training_step(model, config, device=device, steps_per_epoch=len(train_batches),
                               distributed=parallel.distributed)
    amp_dtype = step.amp_dtype
    measured["parameters"] = count_parameters(model)

    if config.measure_step_time:
        timing = time_training_step(model, step, train_batches, device, warmup=config.timing_warmup,
                                    repeats=config.timing_repeats, parallel=parallel)
        measured.update(
            step_time_s=timing.median_s,
            step_time_iqr_s=timing.iqr_s,
            images_per_second=config.batch_size / timing.median_s,
        )

    schedule = training_schedule(spec, config, data.image_size)
    mixing = torch.Generator(device=device).manual_seed(
        rank_seed(config.seed, parallel) if parallel.distributed else config.seed)
    ema = None
    if config.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    state = TrainingState(spec, settings, model, step, ema, train_batches, mixing, parallel)
    history: list[EpochStats] = []
    if saved is not None:
        history = state.load(saved, checkpoint.path)
        measured.update(history=tuple(history), epochs_completed=len(history),
                        final_loss=history[-1].loss if history else None)
    for epoch in range(len(history) + 1, config.epochs + 1):
        stage = stage_for_epoch(schedule, epoch - 1)
        apply_stage(model, train_batches, stage)
        stats = train_epoch(step, train_batches, epoch, config.epochs, mixup_alpha=stage.regularization.mixup_alpha,
                            num_classes=data.num_classes, generator=mixing, ema=ema, on_step=on_step,
                            parallel=parallel)
        if evaluate_each_epoch:
            final = model if ema is None else ema.module
            stats = dataclasses.replace(
                stats, eval_accuracy=evaluate_at_rung(final, data, train_batches, config, amp_dtype, parallel))
        history.append(stats)
        measured.update(history=tuple(history), epochs_completed=epoch, final_loss=stats.loss)
        if checkpoint is not None:
            state.save(checkpoint.path, history)
        if on_epoch is not None:
            on_epoch(stats)
        if rungs is not None and epoch in rungs.epochs and epoch < config.epochs:
            final = model if ema is None else ema.module
            measured["accuracy"] = evaluate_at_rung(final, data, train_batches, config, amp_dtype, parallel)
            measured["peak_memory_bytes"] = peak_memory_bytes(device)
            rung = EvalResult(status=STATUS_OK, wall_time_s=time.perf_counter() - start, **measured)
            if not rungs.judge(rung):
                return epoch
    final = model if ema is None else ema.module
    recalibrate_batch_norm(final, train_batches, config.bn_recalibration_batches, amp_dtype, parallel)
    eval_config = dataclasses.replace(config, image_size=evaluation_image_size(config, data.image_size))
    measured["accuracy"] = evaluate(final, data, eval_config, amp_dtype, parallel)
    if weights is not None and parallel.is_main:
        _write_torch({k: v.detach().cpu() for k, v in final.state_dict().items()}, weights)
    measured["peak_memory_bytes"] = peak_memory_bytes(device)
    return None


def evaluate_at_rung(
    model: torch.nn.Module, data: ImageData, batches: DeviceBatches, config: TrainConfig,
    amp_dtype: torch.dtype | None, parallel: DataParallel | None = None,
) -> float:
    """Hold-out accuracy of ``model`` mid-run, exactly as the final evaluation measures it (batch-norm statistics
    recalibrated on ``batches``, evaluation at :func:`evaluation_image_size`), leaving the run as it was.

    The recalibration resets the batch-norm statistics and draws training batches (advancing the batch stream
    and, through dropout and stochastic depth, the random generators), and both passes switch the modules'
    train/eval modes; all of that goes back afterwards, so training goes on exactly as it would have without
    the rung (on CPU, bit for bit). Its cost is one recalibration and one hold-out evaluation.
    """
    device = next(model.parameters()).device
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    modes = [module.training for module in model.modules()]
    position = batches.state_dict()
    eval_config = dataclasses.replace(config, image_size=evaluation_image_size(config, data.image_size))
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
        recalibrate_batch_norm(model, batches, config.bn_recalibration_batches, amp_dtype, parallel)
        accuracy = evaluate(model, data, eval_config, amp_dtype, parallel)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    for module, training in zip(model.modules(), modes):
        module.training = training
    batches.load_state_dict(position)
    return accuracy


def check_data(spec: ArchSpec, config: TrainConfig, data: ImageData | StreamingFolder) -> None:
    """Refuses data this run cannot train on, before any work: a spec that pins other input channels than the
    data's, or a batch larger than the training split (every epoch would be empty, as batches drop the rest)."""
    if spec.in_channels is not None and spec.in_channels != data.in_channels:
        raise SpecError(
            f"spec {spec.name or '(unnamed)'} pins in_channels {spec.in_channels}, but the data {data.name} has "
            f"{data.in_channels} channel(s): remove in_channels from the spec to follow the data, or use "
            f"{spec.in_channels}-channel data"
        )
    train_images = len(data.train_labels)
    if config.batch_size is not None and config.batch_size > train_images:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the training set: {train_images} images of {data.name} "
            f"after the hold-out split; use a batch size of at most {train_images}"
        )


def check_not_upsampled(spec: ArchSpec, config: TrainConfig, data: ImageData | StreamingFolder) -> None:
    """Refuses a cached image folder smaller than a size the run trains at: ``nas train`` decodes a folder at the
    size the user asked for, and its images must not be upsampled on the device behind their back (decode the
    folder at that size, or stream it). Other sources keep their own size, and the coefficient search resizes on
    purpose, so this is ``nas train``'s check (:class:`TrainPreflight`), not :func:`check_data`'s."""
    largest = max(stage.image_size for stage in training_schedule(spec, config, data.image_size))
    if isinstance(data, ImageData) and data.name.startswith("imagefolder:") and largest > data.image_size:
        raise ValueError(
            f"{data.name} is cached at {data.image_size}px but the run trains at up to {largest}px: its images would "
            f"be upsampled; load it at that size (--image-size {largest}) or stream it (--stream)"
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
                differences.append(f"{part} {field} {_setting(part, field, old)} in the checkpoint, "
                                   f"{_setting(part, field, new)} now")
    return differences


def _setting(part: str, field: str, value: Any) -> str:
    """A checkpoint's setting as a message shows it: an automatic recipe setting (None) as ``auto``."""
    return "auto" if part == "config" and value is None and field in AUTOMATIC_FIELDS else repr(value)


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


class Checkpoint:
    """A run's checkpoint file: its whole training state, written after every epoch; with ``resume`` the run
    continues from it.

    Read at most once per run: :meth:`saved` reads and checks the file the first time it is asked (``nas train``
    asks before its data loads, so a missing, foreign or mismatched checkpoint costs nothing) and gives the same
    state to :func:`train_and_evaluate`, unless the spec, the recipe or the file changed in between.
    """

    def __init__(self, path: Path, *, resume: bool = False) -> None:
        self.path = path
        self.resume = resume
        self._read: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def saved(self, spec: ArchSpec, config: TrainConfig) -> dict[str, Any] | None:
        """The state to continue (None unless ``resume``), as :func:`read_checkpoint` returns it for ``spec`` and
        ``config``; raises its :class:`CheckpointError` for a file that cannot continue this run."""
        if not self.resume:
            return None
        identity = (spec, config, self._file_version())
        if self._read is None or self._read[0] != identity:
            self._read = (identity, read_checkpoint(self.path, spec, config))
        return self._read[1]

    def _file_version(self) -> tuple[int, int, int] | None:
        """The file's inode, modification time and size, which change when it is written again (a run replaces
        it: :func:`~search_spaces.files.write_file`); None when it cannot be read."""
        try:
            status = self.path.stat()
        except OSError:
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size


class TrainPreflight:
    """Everything ``nas train`` refuses before it trains, each checked once and in the order that costs least, so
    that a refusal is one line and nothing was loaded, created or trained.

    Construction checks what needs no file: the device exists (:func:`~nas.measure.resolve_device`); ``resume``
    and ``force`` come with a checkpoint, and not together; every output is a path the user can write
    (:func:`~search_spaces.files.check_output`: ``save`` a directory, ``checkpoint`` and ``export_onnx`` files),
    and an ONNX export has ``save``'s weights to export. :meth:`start` then checks the files and the data.
    """

    def __init__(
        self,
        spec: ArchSpec,
        config: TrainConfig,
        *,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        force: bool = False,
        save: str | Path | None = None,
        export_onnx: str | Path | None = None,
        parallel: DataParallel | None = None,
    ) -> None:
        resolve_device(config.device)  # a device this machine lacks is refused before the data loads
        if resume and checkpoint is None:
            raise ValueError("--resume needs --checkpoint PATH (the file earlier runs of this command wrote)")
        if force and checkpoint is None:
            raise ValueError("--force starts an existing --checkpoint over: give --checkpoint PATH")
        if force and resume:
            raise ValueError("--resume continues the --checkpoint's run and --force starts it over: give one of them")
        self.spec, self.config, self.force = spec, config, force
        self.parallel = parallel or DataParallel()
        self.save = None if save is None else check_output(save, flag="--save", force=True, directory=True)
        self.checkpoint = None if checkpoint is None else Checkpoint(
            check_output(checkpoint, flag="--checkpoint", force=True, directory=False), resume=resume)
        self.onnx = None if export_onnx is None else check_output(export_onnx, flag="--export-onnx", force=True,
                                                                  directory=False)
        if self.onnx is not None and self.save is None:
            raise ValueError("--export-onnx exports the saved weights: give --save DIR as well")

    @property
    def weights(self) -> Path | None:
        """Where the trained weights go: :data:`WEIGHTS_FILE` in the ``save`` directory, beside :func:`save_run`'s
        files."""
        return None if self.save is None else self.save / WEIGHTS_FILE

    @contextlib.contextmanager
    def start(self, load: Callable[[], ImageData]) -> Iterator[ImageData]:
        """Checks the files and the data, then yields the data ``load`` returns, holding the checkpoint's lock
        until the block ends.

        In order: the checkpoint's :class:`~search_spaces.files.FileLock` (a second run is refused, naming this
        one's host and pid); an existing checkpoint without ``resume`` or ``force``; the checkpoint to resume, read
        once (:class:`Checkpoint`); then the data (:func:`check_data`, :func:`check_not_upsampled`, a global batch
        the ranks can share, and
        :func:`check_checkpoint_data` against the checkpoint). The ``save`` directory is created last. Of the ranks
        of a data-parallel run, rank 0 alone takes the lock and creates directories; every rank checks the rest.
        """
        with contextlib.ExitStack() as held:
            saved = None
            checkpoint = self.checkpoint
            if checkpoint is not None:
                # A --resume whose directory is missing has no checkpoint to resume, which read_checkpoint says
                # without creating the directory.
                if self.parallel.is_main and (not checkpoint.resume or checkpoint.path.parent.is_dir()):
                    checkpoint.path.parent.mkdir(parents=True, exist_ok=True)
                    held.enter_context(FileLock(checkpoint.path, what="checkpoint"))
                if checkpoint.path.exists() and not (checkpoint.resume or self.force):
                    raise FileExistsError(f"--checkpoint {checkpoint.path} exists: add --resume to continue its run, "
                                          "or --force to start over (overwriting it)")
                saved = checkpoint.saved(self.spec, self.config)
            data = load()
            check_data(self.spec, self.config, data)
            check_not_upsampled(self.spec, self.config, data)
            self.parallel.share(resolve_recipe(self.config, train_images=len(data.train_labels),
                                               flips=data.flips).batch_size)
            if saved is not None:
                check_checkpoint_data(saved, checkpoint.path, self.spec, data)
            if self.save is not None and self.parallel.is_main:
                self.save.mkdir(parents=True, exist_ok=True)
            yield data


class TrainingState:
    """Everything a run needs to continue exactly where it stopped, saved to and loaded from one file."""

    def __init__(self, spec: ArchSpec, config: TrainConfig, model: torch.nn.Module, step: TrainingStep,
                 ema: AveragedModel | None, batches: DeviceBatches, mixing: torch.Generator,
                 parallel: DataParallel | None = None) -> None:
        self.spec, self.config, self.model, self.step = spec, config, model, step
        self.ema, self.batches, self.mixing = ema, batches, mixing
        self.parallel = parallel or DataParallel()

    def _generators(self) -> dict[str, torch.Tensor | None]:
        """This rank's random generator states: its mixup generator, torch's CPU one and the device's."""
        device = next(self.model.parameters()).device
        return {
            "mixing_rng": self.mixing.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }

    def save(self, path: Path, history: list[EpochStats]) -> None:
        """Writes the state to ``path`` (rank 0; every rank must call this, as it gathers the ranks' generators)."""
        generators = self._generators()
        ranks = all_gather_objects(generators, self.parallel) if self.parallel.distributed else None
        if not self.parallel.is_main:
            return
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
            **generators,
        }
        if ranks is not None:
            state["ranks"] = {"world_size": self.parallel.world_size, "generators": ranks}
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
            history = [EpochStats(**stats) for stats in state["history"]]
            self._load_generators(state, len(history), device)
            return history
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
            if is_out_of_memory(error):
                raise
            raise CheckpointError(f"{path} is not a checkpoint written by nas train ({_first_line(error)})") from None

    def _load_generators(self, state: Mapping[str, Any], epochs_done: int, device: torch.device) -> None:
        """This rank's generators as saved, when the checkpoint was written by as many ranks as this run has;
        otherwise every rank's own draws are seeded afresh from the seed, its rank and the epochs done."""
        parallel = self.parallel
        if checkpoint_world_size(state) == parallel.world_size:
            saved = state["ranks"]["generators"][parallel.rank] if "ranks" in state else state  # else rank 0's
            self.mixing.set_state(saved["mixing_rng"].cpu())
            torch.set_rng_state(saved["torch_rng"].cpu())
            if saved["cuda_rng"] is not None and device.type == "cuda":
                torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), device)
            return
        seed = _derived_seed(self.config.seed, _RESEED_STREAM, parallel.rank, epochs_done)
        self.mixing.manual_seed(seed)
        torch.manual_seed(seed)


_RESEED_STREAM = 7  # a stream of nas.data._derived_seed (its docstring lists them all)


def checkpoint_world_size(state: Mapping[str, Any]) -> int:
    """How many ranks wrote a checkpoint (as :func:`read_checkpoint` returned it). A run with another number of
    ranks resumes it with the same sample order, schedule and weights; only the ranks' own random draws (dropout,
    stochastic depth, mixup, RandAugment) cannot continue as they were, and are seeded afresh."""
    ranks = state.get("ranks")
    return int(ranks["world_size"]) if isinstance(ranks, Mapping) else 1


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
    data: ImageData | StreamingFolder, config: TrainConfig, *, train: bool, parallel: DataParallel | None = None,
    rows: slice = slice(None),
) -> DeviceBatches | StreamingBatches:
    """The training batches (shared by ``parallel``'s ranks) or the evaluation batches of ``rows`` of the
    evaluation images: cut from resident tensors, or decoded from a streamed folder's files."""
    parallel = parallel or DataParallel()
    options = dict(
        batch_size=config.batch_size if train else config.eval_batch_size,
        augment=config.augment if train else "none",
        shuffle=train,
        drop_last=train,
        channels_last=config.channels_last,
        seed=config.seed,
        rank=parallel.rank,
        world_size=parallel.world_size,
    )
    if isinstance(data, StreamingFolder):
        return data.batches("train" if train else "val", rows, image_size=config.image_size or data.image_size,
                            **options)
    images, labels = (data.train_images, data.train_labels) if train else (data.val_images, data.val_labels)
    return DeviceBatches(images[rows], labels[rows], mean=data.mean, std=data.std, image_size=config.image_size,
                         **options)


def time_training_step(
    model: torch.nn.Module,
    step: TrainingStep,
    batches: DeviceBatches,
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    parallel: DataParallel | None = None,
) -> StepTiming:
    """Step time S with the one protocol, on the training network and step themselves and one real batch (of a
    data-parallel run, every rank times as many steps as rank 0).

    Timing happens on the network that will train, not on a copy, because a copy costs a second full build (and
    with ``torch.compile`` a second compilation, the slowest part of a short run), and because the timed step is
    then, by construction, the very step training runs: same module, optimizer, schedule and compiled graph.
    Afterwards everything the timed steps touched goes back to how it was: the parameters and buffers (batch-norm
    statistics), the optimizer's, schedule's and gradient scaler's state, the batch stream's position and the
    random generators of the CPU and ``device``. Training after timing is exactly what it would be without timing.
    """
    initial_weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
    initial_step = copy.deepcopy(step.state_dict())
    initial_batches = batches.state_dict()
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
        images, labels = next(iter(batches))
        timing = time_step(lambda: step(images, labels), device, warmup=warmup, repeats=repeats,
                           agree=None if parallel is None else lambda steps: decided_by_rank_zero(steps, parallel))
    model.load_state_dict(initial_weights)
    model.zero_grad(set_to_none=True)
    step.load_state_dict(initial_step)
    batches.load_state_dict(initial_batches)
    return timing


def evaluation_image_size(config: TrainConfig, data_image_size: int) -> int:
    """The image size a run evaluates (and its weights are exported) at: ``config.eval_image_size``, else the last
    training size (the final size of a progressive schedule, else ``config.image_size``, else the data's)."""
    if config.eval_image_size is not None:
        return config.eval_image_size
    if config.progressive is not None:
        return progressive_schedule(config.progressive, config.epochs)[-1].image_size
    return config.image_size or data_image_size


WEIGHTS_FILE = "weights.pt"  # nas train --save's state dict of the trained network, beside spec.yaml and result.json


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelInput:
    """What a trained network takes and gives, recorded wherever its weights go (``result.json``, the ONNX file's
    metadata) so that inference can feed it as the run fed its hold-out images (:func:`model_input`).

    The network (``weights.pt`` built from ``spec.yaml``) takes float32 ``(N, in_channels, image_size,
    image_size)`` images normalized per channel: ``(pixel / 255 - mean) / std`` of uint8 pixels, ``mean`` and
    ``std`` the training split's statistics in [0, 1] units, channels in the data's order; images of another size
    are resized to ``image_size`` (the size the run evaluated at) bilinearly with antialiasing, as the data was. It
    gives ``num_classes`` logits, named by ``class_names`` in label order where the data names its classes.
    """

    image_size: int
    in_channels: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, 1)
        check_int("in_channels", self.in_channels, 1)
        check_int("num_classes", self.num_classes, 2)
        for field in ("mean", "std"):
            values = getattr(self, field)
            if len(values) != self.in_channels:
                raise ValueError(f"{field} must have one value per channel ({self.in_channels}), got {values}")
        if not all(value > 0 for value in self.std):
            raise ValueError(f"std must be positive in every channel, got {self.std}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names must name each of the {self.num_classes} classes, got "
                             f"{len(self.class_names)} names")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: lists for the per-channel values; ``class_names`` only when the data names them."""
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["mean"], data["std"] = list(self.mean), list(self.std)
        if self.class_names is None:
            del data["class_names"]
        else:
            data["class_names"] = list(self.class_names)
        return data


def model_input(data: ImageData, config: TrainConfig) -> ModelInput:
    """What the network a run of ``config`` on ``data`` trains takes and gives: the data's channels, classes and
    normalization, at the image size the run evaluates at (:func:`evaluation_image_size`)."""
    return ModelInput(image_size=evaluation_image_size(config, data.image_size), in_channels=data.in_channels,
                      num_classes=data.num_classes, mean=data.mean, std=data.std)


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """What :func:`save_run` wrote into ``directory``: the spec the weights fit and what the network takes."""

    directory: Path
    spec: ArchSpec
    input: ModelInput

    @property
    def weights(self) -> Path:
        """The trained network's state dict (:data:`WEIGHTS_FILE`), which :func:`train_and_evaluate` wrote."""
        return self.directory / WEIGHTS_FILE


def trained_spec(spec: ArchSpec, data: ImageData) -> ArchSpec:
    """The spec that builds the network a run on ``data`` trained, saying what it was trained for
    (:meth:`~search_spaces.spec.ArchSpec.for_data`): the data's classes, and its channel count when not RGB's 3,
    so that the spec saved next to the weights builds a network they fit."""
    return spec.for_data(num_classes=data.num_classes, in_channels=data.in_channels)


def run_record(result: EvalResult, data: ImageData) -> dict[str, Any]:
    """A run's result as ``nas train --json`` prints it: the result's fields and ``evaluated_on``, what its
    accuracy was measured on (``data``: the evaluation source, or the hold-out of the training source) and on how
    many images."""
    return {**result.to_dict(), "evaluated_on": {"data": data.evaluated_on, "images": len(data.val_labels)}}


def save_run(directory: Path, spec: ArchSpec, data: ImageData, config: TrainConfig, result: EvalResult) -> SavedRun:
    """Writes a finished run's artifacts next to its weights (:data:`WEIGHTS_FILE`, which :func:`train_and_evaluate`
    writes) through :func:`~search_spaces.files.write_file`: ``spec.yaml`` (:func:`trained_spec`) and
    ``result.json``, the result as ``nas train --json`` prints it (:func:`run_record`) plus an ``input`` entry,
    :func:`model_input`'s record of what the network takes (image size, channels, normalization mean and std,
    classes).

    ``weights.pt`` stays a plain state dict, loadable with ``load_state_dict``; what inference needs beside it is
    in those two files.
    """
    saved = SavedRun(directory, trained_spec(spec, data), model_input(data, config))
    directory.mkdir(parents=True, exist_ok=True)
    dump_spec(saved.spec, directory / "spec.yaml")
    record = {**run_record(result, data), "input": saved.input.to_dict()}
    write_file(directory / "result.json", json.dumps(record, indent=2) + "\n")
    return saved


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
    on_step: Callable[[int, int, int], None] | None = None,
    parallel: DataParallel | None = None,
) -> EpochStats:
    """One pass over the training batches (mixed up when ``mixup_alpha`` > 0); reads the device once, at the end.
    ``on_step(epoch, step, steps)`` is told after each step. With ``parallel``, the loss and accuracy are the
    global batch's: each rank's sums are added over the ranks once, at the end."""
    parallel = parallel or DataParallel()
    start = time.perf_counter()
    total_loss = torch.zeros((), device=step.optimizer.param_groups[0]["params"][0].device)
    total_correct = torch.zeros((), dtype=torch.int64, device=total_loss.device)
    seen = 0
    steps = len(batches)
    for number, (images, labels) in enumerate(batches, start=1):
        if mixup_alpha > 0:
            mixed = mixup(images, labels, alpha=mixup_alpha, num_classes=num_classes, generator=generator)
            images, labels = mixed.images, mixed.targets
        loss, correct = step(images, labels)
        if ema is not None:
            ema.update_parameters(step.model)
        total_loss += loss
        total_correct += correct
        seen += labels.shape[0]
        if on_step is not None:
            on_step(epoch, number, steps)
    all_reduce_sum(total_loss, parallel)
    all_reduce_sum(total_correct, parallel)
    seen *= parallel.world_size  # equal shares
    mean_loss = total_loss.item() / (len(batches) * parallel.world_size)
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
    model: torch.nn.Module, batches: DeviceBatches, num_batches: int, amp_dtype: torch.dtype | None,
    parallel: DataParallel | None = None,
) -> None:
    """Replaces batch-norm running statistics by their plain average over ``num_batches`` training batches (global
    batches with several ranks: gathered globally with ``sync_batch_norm``, else averaged over the ranks)."""
    parallel = parallel or DataParallel()
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    if num_batches > 0 and norms:
        _gather_statistics(model, norms, batches, num_batches, amp_dtype)
    if not parallel.sync_batch_norm:
        average_buffers(model, parallel)


def _gather_statistics(model: torch.nn.Module, norms: list[torch.nn.Module], batches: DeviceBatches,
                       num_batches: int, amp_dtype: torch.dtype | None) -> None:
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
def evaluate(model: torch.nn.Module, data: ImageData, config: TrainConfig, amp_dtype: torch.dtype | None,
             parallel: DataParallel | None = None) -> float:
    """Top-1 accuracy on the evaluation images (the hold-out split, or ``--eval-data``) at ``config``'s image size.
    With several ranks each evaluates a contiguous slice and the correct counts are added."""
    parallel = parallel or DataParallel()
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = len(data.val_labels)
    first, last = count * parallel.rank // parallel.world_size, count * (parallel.rank + 1) // parallel.world_size
    if last > first:
        for images, labels in _batches(data, config, train=False, rows=slice(first, last)):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
            correct += (logits.argmax(dim=1) == labels).sum()
    model.train()
    return all_reduce_sum(correct, parallel).item() / count
