"""What a network costs: parameters, FLOPs, training step time and memory, and on which device.

The one timing protocol (:func:`time_step`) is used by proxy training, ``nas bench`` and the benchmarks, on the one
training step that :func:`nas.step.build_training_step` assembles: the model and optimizer are built and the batch
is on the device before timing starts; warm-up steps are excluded; the device is synchronized around each timed
window (CUDA events on GPUs); the result is the median over several windows of the whole training step (forward,
backward, optimizer update).

FLOPs are reported as multiply-adds, the unit of the EfficientNet papers, counted by ``torch.utils.flop_counter``
(convolutions and matrix products; element-wise work is not counted).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import math
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas.builder import build_model
from nas.complexity import (
    SpecCount,
    count_spec,
    resolve_image_size,
    resolve_in_channels,
)
from nas.recipe import MAX_BATCH_SIZE, TrainConfig, resolve_recipe
from nas.step import build_training_step
from search_spaces.checks import check_int
from search_spaces.spec import MAX_IMAGE_SIZE, ArchSpec

DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")
# What torch's CPU allocator says when malloc fails ("DefaultCPUAllocator: can't allocate memory: ..."); a CUDA
# allocation failure is a torch.OutOfMemoryError instead.
CPU_ALLOCATION_FAILURES = ("can't allocate memory", "DefaultCPUAllocator")


class DeviceUnavailableError(RuntimeError):
    """The requested device does not exist on this machine."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation: CUDA's OutOfMemoryError, Python's MemoryError, or the CPU
    allocator's RuntimeError (which torch raises as a plain RuntimeError)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in CPU_ALLOCATION_FAILURES)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def count_macs(model: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """Multiply-adds of one forward pass of one ``image_size`` x ``image_size`` image, in eval mode.

    The input lives on the model's device, so a model built on the ``meta`` device is counted without
    allocating or computing anything.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def spec_complexity(
    spec: ArchSpec, *, num_classes: int = 1000, image_size: int | None = None, in_channels: int | None = None
) -> SpecCount:
    """Parameters and multiply-adds of ``spec`` (at its eval image size unless given), measured on the network
    built on the meta device (no weights, no work): the truth that :func:`nas.complexity.count_spec` equals.

    ``in_channels`` as for :func:`~nas.builder.build_model` (None: the spec's pinned value, else 3).
    """
    image_size = resolve_image_size(spec, image_size)
    in_channels = resolve_in_channels(spec, in_channels)
    with torch.device("meta"):
        model = build_model(spec, num_classes=num_classes, in_channels=in_channels)
    return SpecCount(
        parameters=count_parameters(model),
        stage_parameters=tuple(count_parameters(stage) for stage in model.stages),
        macs=count_macs(model, image_size, in_channels),
        image_size=image_size,
        num_classes=num_classes,
        in_channels=in_channels,
    )


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; refuses a device not present."""
    kind = name.split(":", 1)[0]
    if kind not in DEVICE_KINDS or (":" in name and kind != "cuda"):
        raise ValueError(f"device must be one of {DEVICE_KINDS} or cuda:N, got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {name!r} is not available: this torch {torch.__version__} sees no CUDA device"
                + (" (it is a CPU-only build)" if torch.version.cuda is None else "")
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {name!r} is not available: there are {torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"device {name!r} is not available: no Apple MPS device on this machine")
    return device


def prepare_device(device: torch.device, threads: int | None = None) -> None:
    """Per-process settings for fast, comparable steps: cuDNN autotuning, TF32, and the CPU thread count.

    Ray sets OMP_NUM_THREADS to a trial's CPU count; torch's own thread pool is set explicitly here.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def describe_device(device: torch.device) -> str:
    """One line naming the hardware and software a measurement was taken on."""
    software = f"torch {torch.__version__}"
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        return (
            f"cuda:{index} {properties.name} (sm_{properties.major}{properties.minor}, "
            f"{properties.total_memory / 2**30:.0f} GiB), {software}, CUDA {torch.version.cuda}"
        )
    if device.type == "mps":
        return f"mps {platform.machine()} Apple GPU, {software}"
    return f"cpu {_cpu_model()} ({torch.get_num_threads()} threads), {software}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    """Waits for queued work on ``device`` to finish, so that a host clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory: allocated tensor memory since the last reset on CUDA; the process's peak resident set on CPU
    (which cannot be reset, so it covers everything the process did); driver-allocated memory on MPS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def release_memory(device: torch.device) -> None:
    """Returns freed memory to the device after a trial, so the next trial starts from the same level.

    On CPU, glibc keeps freed heap pages in its arenas; ``malloc_trim`` hands them back to the system, so a
    worker that runs hundreds of trials does not creep upward in resident memory.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
    elif _LIBC_MALLOC_TRIM is not None:
        _LIBC_MALLOC_TRIM(0)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on a C library without it (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_LIBC_MALLOC_TRIM = _malloc_trim()


@dataclass(frozen=True)
class StepTiming:
    """Seconds per step: the median and interquartile range over timed windows, and every window's mean."""

    median_s: float
    iqr_s: float
    window_s: tuple[float, ...]
    steps_per_window: int
    warmup_steps: int

    @property
    def relative_spread(self) -> float:
        """Interquartile range over median: how much the windows disagree."""
        return self.iqr_s / self.median_s


def time_step(
    step: Callable[[], Any],
    device: torch.device,
    *,
    warmup: int = 5,
    repeats: int = 7,
    min_window_s: float = 0.25,
    max_steps_per_window: int = 200,
    agree: Callable[[int], int] | None = None,
) -> StepTiming:
    """Times ``step`` with the one protocol: ``warmup`` untimed steps, then ``repeats`` synchronized windows.

    Each window runs enough steps to last about ``min_window_s`` (estimated from the last warm-up step), so that
    fast steps are not drowned in timer and launch noise; the result is per step. ``agree`` turns this process's
    steps per window into the count every process runs: the ranks of a data-parallel run estimate differently,
    and each step holds collectives that every rank must join, so a count of their own would leave one rank
    training while another still times (a hang, or collectives paired wrongly).
    """
    check_int("warmup", warmup, 1)
    check_int("repeats", repeats, 1)
    for _ in range(warmup - 1):
        step()
    estimate = time_window(step, device, 1)
    steps_per_window = max(1, min(max_steps_per_window, math.ceil(min_window_s / max(estimate, 1e-9))))
    if agree is not None:
        steps_per_window = agree(steps_per_window)
    windows = tuple(time_window(step, device, steps_per_window) / steps_per_window for _ in range(repeats))
    quartiles = statistics.quantiles(windows, n=4, method="inclusive") if len(windows) > 1 else [windows[0]] * 3
    return StepTiming(
        median_s=statistics.median(windows),
        iqr_s=quartiles[2] - quartiles[0],
        window_s=windows,
        steps_per_window=steps_per_window,
        warmup_steps=warmup,
    )


def time_window(step: Callable[[], Any], device: torch.device, steps: int) -> float:
    """Seconds for ``steps`` steps, with the device idle before and drained after: the one window timer, which
    :func:`time_step` and the paired ratio (:func:`nas.timing.paired_ratio`) both time with."""
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    start_time = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - start_time


@dataclass(frozen=True)
class BenchResult:
    """A training-step benchmark of one spec on one device (and, optionally, forward-only latency).

    ``optimizer`` is the recipe's optimizer the timed step updated the weights with.
    """

    name: str
    device: str
    batch_size: int
    image_size: int
    in_channels: int
    amp: str
    channels_last: bool
    compile: bool
    optimizer: str
    parameters: int
    macs: int
    step: StepTiming
    images_per_second: float
    peak_memory_bytes: int
    inference: StepTiming | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["step"]["relative_spread"] = self.step.relative_spread
        if self.inference is not None:
            data["inference_images_per_second"] = self.batch_size / self.inference.median_s
        return data


# The learning-rate schedule that ``nas bench`` steps through spans this many steps per epoch of the recipe. Only
# the learning rate's value depends on it, never the work of a step, so it need not match any dataset.
BENCH_STEPS_PER_EPOCH = 100


def timed_recipe(recipe: TrainConfig, batch_size: int) -> TrainConfig:
    """The recipe a timed step runs: ``recipe`` at ``batch_size``, resolved as for an epoch of
    BENCH_STEPS_PER_EPOCH batches (its learning rate's value never changes the work of a step)."""
    return resolve_recipe(dataclasses.replace(recipe, batch_size=batch_size),
                          train_images=batch_size * BENCH_STEPS_PER_EPOCH)


def benchmark_spec(
    spec: ArchSpec,
    *,
    device: str = "auto",
    batch_size: int = 32,
    image_size: int | None = None,
    in_channels: int | None = None,
    num_classes: int = 1000,
    amp: str = "auto",
    channels_last: bool = True,
    compile: bool = False,
    warmup: int = 5,
    repeats: int = 7,
    min_window_s: float = 0.25,
    inference: bool = False,
    threads: int | None = None,
    seed: int = 0,
    recipe: TrainConfig | None = None,
) -> BenchResult:
    """Training step time of ``spec`` on a random batch already on the device, with the one timing protocol.

    The timed step is the one training runs, assembled by :func:`nas.step.build_training_step`: ``recipe``
    (None: ``TrainConfig()``, the recipe a default ``nas train`` and search train with) gives the optimizer,
    learning rate, momentum, weight decay, warm-up-cosine schedule and label smoothing; ``amp``,
    ``channels_last`` and ``compile`` given here replace the recipe's. ``in_channels`` None takes the spec's
    pinned value, else 3. An allocation that fails (a batch too large for the device) raises what the allocator
    raised; :func:`is_out_of_memory` recognizes it.
    """
    check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    check_int("image_size", image_size, 1, MAX_IMAGE_SIZE, optional=True)
    recipe = dataclasses.replace(recipe or TrainConfig(), amp=amp, channels_last=channels_last, compile=compile)
    in_channels = resolve_in_channels(spec, in_channels)
    torch_device = resolve_device(device)
    prepare_device(torch_device, threads)
    settings = {
        "batch_size": batch_size, "image_size": spec.train_image_size if image_size is None else image_size,
        "in_channels": in_channels, "num_classes": num_classes, "recipe": recipe, "warmup": warmup,
        "repeats": repeats, "min_window_s": min_window_s, "inference": inference,
    }
    torch.manual_seed(seed)
    reset_peak_memory(torch_device)
    try:
        return _benchmark(spec, torch_device, **settings)
    finally:
        release_memory(torch_device)  # the model and batch went with the helper's frame


def _benchmark(
    spec: ArchSpec,
    device: torch.device,
    *,
    batch_size: int,
    image_size: int,
    in_channels: int,
    num_classes: int,
    recipe: TrainConfig,
    warmup: int,
    repeats: int,
    min_window_s: float,
    inference: bool,
) -> BenchResult:
    model = build_model(spec, num_classes, in_channels)
    step = build_training_step(model, timed_recipe(recipe, batch_size), device=device,
                               steps_per_epoch=BENCH_STEPS_PER_EPOCH)
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    images = torch.randn(batch_size, in_channels, image_size, image_size, device=device)
    images = images.to(memory_format=memory_format)  # (N, C, H, W), as the training batches come
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    timing = time_step(lambda: step(images, labels), device, warmup=warmup, repeats=repeats,
                       min_window_s=min_window_s)
    inference_timing = (
        _time_inference(step.model, images, step.amp_dtype, device, warmup, repeats) if inference else None
    )
    return BenchResult(
        name=spec.name,
        device=describe_device(device),
        batch_size=batch_size,
        image_size=image_size,
        in_channels=in_channels,
        amp="none" if step.amp_dtype is None else str(step.amp_dtype).removeprefix("torch."),
        channels_last=recipe.channels_last,
        compile=recipe.compile,
        optimizer=recipe.optimizer,
        parameters=count_parameters(model),
        macs=count_spec(spec, num_classes=num_classes, image_size=image_size, in_channels=in_channels).macs,
        step=timing,
        images_per_second=batch_size / timing.median_s,
        peak_memory_bytes=peak_memory_bytes(device),
        inference=inference_timing,
    )


def _time_inference(
    model: nn.Module,
    images: torch.Tensor,
    amp_dtype: torch.dtype | None,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> StepTiming:
    model.eval()

    def forward() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(images)

    try:
        return time_step(forward, device, warmup=warmup, repeats=repeats)
    finally:
        model.train()
