"""Step time S as the reward needs it: a ratio to the baseline from paired windows, inside a per-device lock.

DESIGN.md: "S is what the user's real training will pay". A candidate's step time measured alone drifts with the
device's clock and temperature and with whatever else runs on the machine, and the baseline measured at another
time drifts differently, so S/S0 from two separate measurements mixes architecture with circumstance. Here the
candidate (A) and the reference (B) are both resident and timed in interleaved windows in one process, pair after
pair, alternating the order (A B, B A, A B, ...), so that a slowdown shared by both cancels in each pair's ratio
and a linear drift cancels between the two orders (:func:`paired_ratio`). :func:`time_relative` assembles both
training steps exactly as training and ``nas bench`` do and runs the pairs. :func:`relative_step_time` is the whole
sequence every caller wants (``nas bench --relative-to``, a campaign's trial, the benchmarks): the step-time cache
first, then the paired timing inside the device's lock, then the cache again with the new measurement.

Timing windows never share a device, while proxy trainings may (fractional trials): :class:`DeviceLock` is the
exclusive per-device lock, across the processes of one machine, that a timing holds.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import math
import os
import socket
import stat
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Sequence

import torch

from nas.builder import build_model
from nas.measure import (
    BENCH_STEPS_PER_EPOCH,
    describe_device,
    prepare_device,
    release_memory,
    time_window,
    timed_recipe,
)
from nas.recipe import TimingConfig, TrainConfig
from nas.records import IMPRECISE, relative_half_width
from nas.step import build_training_step
from nas.step_cache import StepTimeCache, cache_key
from nas.storage import check_file_location, make_storage, storage_errors
from search_spaces.checks import check_int, check_real
from search_spaces.spec import ArchSpec

# The caps TimingConfig puts on its warmup and pairs, so a direct call refuses what a config would.
MAX_WARMUP = 1000
MAX_PAIRS = 1000
CONFIDENCE = 0.95  # of the interval S/S0 is recorded with

Step = Callable[[], Any]
Timer = Callable[[Step, torch.device, int], float]
Pressure = Callable[[], "float | None"]

_PSI_CPU = Path("/proc/pressure/cpu")


def cpu_pressure_s(path: Path = _PSI_CPU) -> float | None:
    """Seconds, summed since boot, during which some runnable task waited for a CPU (Linux's pressure stall
    information, ``some ... total=`` in microseconds); None where the kernel does not provide it (other systems,
    kernels before 4.20 or booted without PSI)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("some "):
            for field in line.split():
                if field.startswith("total=") and field[len("total="):].isdigit():
                    return int(field[len("total="):]) / 1e6
    return None


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """A distribution-free interval for the median of ``values``: the k-th smallest and the k-th largest, with
    the largest k for which ``1 - 2 * P(Binomial(n, 1/2) < k) >= confidence`` (the chance that the true median
    lies between them, whatever the distribution of independent values). None when even the smallest and the
    largest do not reach ``confidence`` (fewer than 6 values at 95%).

    Why this interval: it assumes nothing about the shape of the ratios' distribution (a co-tenant's bursts give
    it a long tail), and it is the interval of the same median that estimates S/S0.

    Example, 95%, n = 10: P(B <= 1) = 11/1024, so k = 2 (coverage 1 - 22/1024 = 0.979; k = 3 gives 0.891): the
    2nd smallest and the 2nd largest. n = 6: k = 1 (0.969), the smallest and the largest.
    """
    check_real("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    ordered = sorted(values)
    n = len(ordered)
    below = 0.0  # P(B < k) as k grows
    k = 0
    while k < n // 2:
        below += math.comb(n, k) / 2**n
        if 1 - 2 * below < confidence:
            break
        k += 1
    if k == 0:
        return None
    return ordered[k - 1], ordered[n - k]


def stop_reason(
    quads: int,
    half_width: float | None,
    elapsed_s: float,
    *,
    min_quads: int,
    precision: float | None,
    max_seconds: float,
) -> str | None:
    """Whether a measurement of ``quads`` clean quads (two pairs, A B then B A) so far stops, and why (one of
    :data:`~nas.records.STOPPED_BY`, "contention" aside), or None to go on.

    ``precision`` None is a fixed budget: stop at ``min_quads``. Otherwise stop once there are at least
    ``min_quads`` and the interval's relative half-width is at most ``precision``. Either way stop when
    ``elapsed_s`` reaches ``max_seconds`` (the caller has at least one quad by then, clean or contended): a fixed
    budget whose quads keep being left out under contention must end too. Example: precision 0.02, 8 quads at
    half-width 0.031 after 12 s of a 30 s cap: go on; the same at 31 s: "cap".
    """
    if quads >= min_quads:
        if precision is None:
            return "pairs"
        if half_width is not None and half_width <= precision:
            return "precision"
    if elapsed_s >= max_seconds:
        return "cap"
    return None


@dataclass(frozen=True)
class PairedTiming:
    """The candidate's step time relative to the reference's, from interleaved windows in quads A B B A.

    ``ratios`` holds one ratio per pair (candidate seconds per step over reference seconds per step) of the pairs
    the estimate used, in run order: even pairs timed the candidate first, odd pairs the reference first. ``ratio``
    is the estimate (see :func:`paired_ratio`), within ``interval`` (``ratio_low``, ``ratio_high``: the
    :data:`CONFIDENCE` interval of :func:`median_interval`, None with too few quads); ``ratio_iqr`` is the
    interquartile range of ``ratios``, a single pair's spread. ``step_time_s`` and ``reference_step_time_s`` are
    each network's median seconds per step over its windows; ``steps_per_window`` is (candidate, reference);
    ``warmup_steps`` ran before timing after each of the ``blocks`` builds of the two networks.
    ``discarded_pairs`` were timed under CPU contention and left out (``contention_seen`` False: no signal on
    this system, nothing was left out); ``seconds`` is what the whole measurement took, builds and warm-ups
    included; ``stopped_by`` says why it ended (:data:`~nas.records.STOPPED_BY`).
    """

    ratio: float
    ratio_low: float | None
    ratio_high: float | None
    ratio_iqr: float
    ratios: tuple[float, ...]
    step_time_s: float
    reference_step_time_s: float
    pairs: int
    steps_per_window: tuple[int, int]
    warmup_steps: int
    blocks: int = 1
    discarded_pairs: int = 0
    contention_seen: bool = False
    seconds: float = 0.0
    stopped_by: str = "pairs"

    @property
    def half_width(self) -> float | None:
        """The interval's half-width relative to the ratio (:func:`relative_half_width`)."""
        interval = None if self.ratio_low is None or self.ratio_high is None else (self.ratio_low, self.ratio_high)
        return relative_half_width(self.ratio, interval)

    @property
    def precise(self) -> bool:
        return self.stopped_by not in IMPRECISE

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples as lists), as a study attribute or a report stores it."""
        data = dataclasses.asdict(self)
        data["ratios"] = list(self.ratios)
        data["steps_per_window"] = list(self.steps_per_window)
        return data


@dataclass
class _Windows:
    """The seconds per step of each window so far, candidate and reference, by quad (A B B A: 2 of each)."""

    clean: list[tuple[float, float, float, float]] = dataclasses.field(default_factory=list)
    contended: list[tuple[float, float, float, float]] = dataclasses.field(default_factory=list)

    @staticmethod
    def quad_ratios(quads: Sequence[tuple[float, float, float, float]]) -> list[float]:
        """Per quad, the geometric mean of its A B pair's ratio and its B A pair's: a drift over the quad slows
        the second window of each pair, so the two err in opposite directions and cancel to first order."""
        return [math.sqrt((a1 / b1) * (a2 / b2)) for a1, b1, a2, b2 in quads]


def paired_ratio(
    build: Callable[[], tuple[Step, Step]],
    device: torch.device,
    *,
    warmup: int = 5,
    pairs: int = 12,
    min_window_s: float = 0.25,
    max_steps_per_window: int = 200,
    precision: float | None = None,
    max_seconds: float = 30.0,
    rebuild_every: int = 8,
    max_stall: float | None = 0.1,
    timer: Timer = time_window,
    clock: Callable[[], float] = time.monotonic,
    pressure: Pressure = cpu_pressure_s,
) -> PairedTiming:
    """Step time of a candidate relative to a reference on ``device``, from interleaved timed windows, measured
    until it is precise.

    ``build()`` returns fresh (candidate step, reference step) callables; it is called again every
    ``rebuild_every`` pairs, so that no one build's memory layout biases the whole estimate. After each build both
    run ``warmup`` steps; after the first, the last of them is timed alone to choose each one's steps per window
    (enough to last about ``min_window_s``, at most ``max_steps_per_window``, as :func:`nas.measure.time_step`
    does). Then windows run in quads A B B A (candidate, reference, reference, candidate).

    Why this estimate: a slowdown both share within a pair (a co-tenant, a clock change) cancels in that pair's
    ratio. A drift does not cancel inside one pair: the window that runs second is slowed by it, so the A B pair
    errs one way and the B A pair the other by the same amount, to first order. Each quad's ratio is therefore
    the geometric mean of its two pairs' ratios, and the estimate is the median of the quads' ratios (a quad that
    straddled the start or end of a co-tenant's burst stays out), with the distribution-free interval of that
    median (:func:`median_interval`).

    How long: at least ``pairs`` pairs (rounded up to whole quads); with ``precision`` None exactly that; else
    until the interval's half-width is at most ``precision`` of the ratio. Either way no longer than
    ``max_seconds`` (:func:`stop_reason`): a measurement the cap ends is recorded as imprecise (``stopped_by``).

    Contention is seen, not guessed: ``pressure()`` gives the seconds some task has waited for a CPU
    (:func:`cpu_pressure_s`; None: unknown). A quad during which that grew by more than ``max_stall`` of its wall
    time was timed beside another process that wanted the same CPUs: it is left out (``discarded_pairs``) and the
    measurement goes on. If the cap comes before any clean quad, the contended ones give the ratio
    (``stopped_by`` "contention"). ``max_stall`` None does not look (``contention_seen`` False).

    ``timer(step, device, steps)`` returns the seconds ``steps`` steps took (the device synchronized around them)
    and ``clock()`` the time; tests inject a fake clock here.
    """
    check_int("warmup", warmup, 1, MAX_WARMUP)
    check_int("pairs", pairs, 1, MAX_PAIRS)
    check_real("min_window_s", min_window_s, 0.0, low_open=True)
    check_int("max_steps_per_window", max_steps_per_window, 1)
    check_real("precision", precision, 0.0, 1.0, low_open=True, optional=True)
    check_real("max_seconds", max_seconds, 0.0, low_open=True)
    check_int("rebuild_every", rebuild_every, 2)
    check_real("max_stall", max_stall, 0.0, 1.0, low_open=True, optional=True)
    if max_stall is None:
        pressure = _unknown_pressure
    min_quads = math.ceil(pairs / 2)
    quads_per_block = max(1, rebuild_every // 2)
    start = clock()
    windows = _Windows()
    steps_per_window: tuple[int, int] | None = None
    blocks = 0
    stopped_by = None
    contention_seen = False
    while stopped_by is None:
        steps = None  # the last block's networks go before the next are built
        steps = build()
        blocks += 1
        if steps_per_window is None:
            steps_per_window = tuple(
                _warm_up(step, device, warmup, min_window_s, max_steps_per_window, timer) for step in steps)
        else:
            for step in steps:
                for _ in range(warmup):
                    step()
        for _ in range(quads_per_block):
            before = pressure(), clock()
            quad = tuple(timer(steps[which], device, steps_per_window[which]) / steps_per_window[which]
                         for which in (0, 1, 1, 0))
            after = pressure(), clock()
            candidate_1, reference_1, reference_2, candidate_2 = quad
            seconds_per_step = (candidate_1, reference_1, candidate_2, reference_2)  # the A B pair, the B A pair
            stall = _stall_share(before, after)
            contention_seen = contention_seen or stall is not None
            contended = stall is not None and max_stall is not None and stall > max_stall
            (windows.contended if contended else windows.clean).append(seconds_per_step)
            interval = median_interval(_Windows.quad_ratios(windows.clean))
            ratio = statistics.median(_Windows.quad_ratios(windows.clean)) if windows.clean else None
            half_width = None if ratio is None else relative_half_width(ratio, interval)
            stopped_by = stop_reason(len(windows.clean), half_width, clock() - start, min_quads=min_quads,
                                     precision=precision, max_seconds=max_seconds)
            if stopped_by is not None:
                break
    if not windows.clean:
        stopped_by = "contention"
    return _paired_timing(windows, steps_per_window, warmup, blocks, contention_seen, clock() - start, stopped_by)


def _unknown_pressure() -> None:
    return None


def _stall_share(before: tuple[float | None, float], after: tuple[float | None, float]) -> float | None:
    """The share of the wall time between two readings during which some task waited for a CPU; None unknown."""
    (stall_before, time_before), (stall_after, time_after) = before, after
    if stall_before is None or stall_after is None or time_after <= time_before:
        return None
    return (stall_after - stall_before) / (time_after - time_before)


def _paired_timing(windows: _Windows, steps_per_window: tuple[int, int] | None, warmup: int, blocks: int,
                   contention_seen: bool, seconds: float, stopped_by: str) -> PairedTiming:
    used = windows.clean or windows.contended
    quad_ratios = _Windows.quad_ratios(used)
    ratio = statistics.median(quad_ratios)
    interval = median_interval(quad_ratios)
    ratios = tuple(ratio for a1, b1, a2, b2 in used for ratio in (a1 / b1, a2 / b2))
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive")
    assert steps_per_window is not None  # a measurement has at least one quad, so one build
    return PairedTiming(
        ratio=ratio,
        ratio_low=None if interval is None else interval[0],
        ratio_high=None if interval is None else interval[1],
        ratio_iqr=quartiles[2] - quartiles[0],
        ratios=ratios,
        step_time_s=statistics.median(value for quad in used for value in (quad[0], quad[2])),
        reference_step_time_s=statistics.median(value for quad in used for value in (quad[1], quad[3])),
        pairs=len(ratios),
        steps_per_window=steps_per_window,
        warmup_steps=warmup,
        blocks=blocks,
        discarded_pairs=0 if not windows.clean else 2 * len(windows.contended),
        contention_seen=contention_seen,
        seconds=seconds,
        stopped_by=stopped_by,
    )


def _warm_up(
    step: Step, device: torch.device, warmup: int, min_window_s: float, max_steps: int, timer: Timer
) -> int:
    """Runs ``warmup`` steps, the last one timed, and returns the steps per window that last ``min_window_s``."""
    for _ in range(warmup - 1):
        step()
    estimate = timer(step, device, 1)
    return max(1, min(max_steps, math.ceil(min_window_s / max(estimate, 1e-9))))


def time_relative(
    spec: ArchSpec,
    reference: ArchSpec,
    settings: TimingConfig,
    *,
    device: torch.device,
    num_classes: int,
    in_channels: int,
    recipe: TrainConfig | None = None,
    seed: int = 0,
) -> PairedTiming:
    """Training step time of ``spec`` relative to ``reference`` at the timing ``settings``, on ``device``.

    Both training steps are assembled by :func:`nas.step.build_training_step` from ``recipe`` (None:
    ``TrainConfig()``) with its ``amp``, ``channels_last`` and ``compile`` replaced by the settings', and both
    networks are resident at once, training on one random batch of ``settings.batch_size`` images of
    ``settings.image_size`` already on the device; both are built again every ``settings.rebuild_every`` pairs.
    :func:`paired_ratio` runs with the settings' warm-up, pairs, windows, precision, time cap and contention
    threshold. ``settings`` must be resolved (:meth:`~nas.recipe.TimingConfig.resolved`). The caller holds the
    device's :class:`DeviceLock`. Memory is released before returning, also after a failure (an allocation that
    fails raises what the allocator raised; :func:`nas.measure.is_out_of_memory` recognizes it).
    """
    if settings.image_size is None or settings.batch_size is None:
        raise ValueError(
            "settings must be resolved (TimingConfig.resolved): image_size and batch_size must be set, got "
            f"image_size={settings.image_size!r}, batch_size={settings.batch_size!r}"
        )
    recipe = dataclasses.replace(recipe or TrainConfig(), amp=settings.amp, channels_last=settings.channels_last,
                                 compile=settings.compile)
    prepare_device(device)
    torch.manual_seed(seed)
    try:
        return _time_relative(spec, reference, settings, recipe, device, num_classes, in_channels)
    finally:
        release_memory(device)  # the networks and the batch went with the helper's frame


def _time_relative(
    spec: ArchSpec,
    reference: ArchSpec,
    settings: TimingConfig,
    recipe: TrainConfig,
    device: torch.device,
    num_classes: int,
    in_channels: int,
) -> PairedTiming:
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    size = settings.image_size
    images = torch.randn(settings.batch_size, in_channels, size, size, device=device)
    images = images.to(memory_format=memory_format)  # (N, C, H, W), as the training batches come
    labels = torch.randint(0, num_classes, (settings.batch_size,), device=device)

    def build() -> tuple[Step, Step]:
        # The schedule's steps per epoch only set the learning rate's value, never a step's work (as `nas bench`).
        candidate_step, reference_step = (
            build_training_step(build_model(network, num_classes, in_channels),
                                timed_recipe(recipe, settings.batch_size), device=device,
                                steps_per_epoch=BENCH_STEPS_PER_EPOCH)
            for network in (spec, reference)
        )
        return lambda: candidate_step(images, labels), lambda: reference_step(images, labels)

    return paired_ratio(build, device, warmup=settings.warmup, pairs=settings.pairs, min_window_s=settings.window_s,
                        precision=settings.precision, max_seconds=settings.max_seconds,
                        rebuild_every=settings.rebuild_every, max_stall=settings.max_stall)


@dataclass(frozen=True)
class RelativeStepTime:
    """S/S0 as a trial records it (:class:`~nas.records.EvalResult`'s field names): the ratio, its interval and
    spread, each network's median seconds per step, how the measurement went (pairs used and discarded under
    contention, seconds spent, why it stopped: :data:`~nas.records.STOPPED_BY`), and where it came from:
    ``cached`` (read from the step-time cache) or timed now."""

    step_time_ratio: float
    step_time_ratio_low: float | None
    step_time_ratio_high: float | None
    step_time_ratio_iqr: float
    step_time_s: float
    reference_step_time_s: float
    step_time_pairs: int
    step_time_discarded_pairs: int
    step_time_measure_s: float
    step_time_stopped_by: str
    cached: bool = False

    @classmethod
    def of(cls, paired: PairedTiming) -> RelativeStepTime:
        return cls(step_time_ratio=paired.ratio, step_time_ratio_low=paired.ratio_low,
                   step_time_ratio_high=paired.ratio_high, step_time_ratio_iqr=paired.ratio_iqr,
                   step_time_s=paired.step_time_s, reference_step_time_s=paired.reference_step_time_s,
                   step_time_pairs=paired.pairs, step_time_discarded_pairs=paired.discarded_pairs,
                   step_time_measure_s=paired.seconds, step_time_stopped_by=paired.stopped_by)

    @property
    def half_width(self) -> float | None:
        """The interval's half-width relative to the ratio; None without an interval."""
        if self.step_time_ratio_low is None or self.step_time_ratio_high is None:
            return None
        return relative_half_width(self.step_time_ratio, (self.step_time_ratio_low, self.step_time_ratio_high))

    @property
    def precise(self) -> bool:
        return self.step_time_stopped_by not in IMPRECISE

    def measurement(self) -> dict[str, Any]:
        """The measured fields, as the step-time cache and a trial's result keep them (``cached`` aside)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "cached"}


def relative_step_time(
    spec: ArchSpec,
    reference: ArchSpec,
    settings: TimingConfig,
    *,
    device: torch.device,
    num_classes: int,
    in_channels: int,
    recipe: TrainConfig | None = None,
    storage_url: str | None = None,
) -> RelativeStepTime:
    """S/S0 of ``spec`` against ``reference`` at the resolved timing ``settings`` on ``device``: the one sequence
    of ``nas bench --relative-to``, a campaign's trial and the benchmarks.

    With ``storage_url``, the step-time cache of that Optuna storage (:class:`~nas.step_cache.StepTimeCache`, keyed
    by both architectures with their classes and input channels, the device as :func:`~nas.measure.describe_device`
    names it now, the settings and the recipe's optimizer) is asked first, and a new measurement is added to it; an
    entry that fails the cache's checks is said on stderr and timed again. Otherwise, or on a miss, both networks are timed in
    interleaved windows (:func:`time_relative`) inside the device's :class:`DeviceLock`. A storage that cannot be
    read or written is a :class:`~nas.storage.StudyError` naming it.
    """
    cache, key = None, None
    if storage_url is not None:
        key = cache_key(spec, reference, num_classes=num_classes, in_channels=in_channels,
                        device=describe_device(device), timing=settings.to_dict(),
                        recipe=(recipe or TrainConfig()).to_dict())
        check_file_location(storage_url)
        with storage_errors(storage_url, "open"):
            cache = StepTimeCache(make_storage(storage_url))
            entry = cache.get(key)
        if entry is not None:
            return RelativeStepTime(**entry, cached=True)
    with DeviceLock(device):
        paired = time_relative(spec, reference, settings, device=device, num_classes=num_classes,
                               in_channels=in_channels, recipe=recipe)
    measured = RelativeStepTime.of(paired)
    if cache is not None and key is not None:
        with storage_errors(storage_url, "write to"):
            cache.put(key, measured.measurement())
    return measured


def lock_key(device: torch.device | str) -> str:
    """The name of ``device``'s lock: ``cpu`` for any CPU, ``cuda<N>`` for the *physical* GPU (the current device
    when the index is not given, mapped through ``CUDA_VISIBLE_DEVICES``, which Ray sets per worker: two workers
    that both see their GPU as ``cuda:0`` share a lock only when it is the same GPU), ``mps``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
        return f"cuda{visible[index] if index < len(visible) else index}"
    if device.type in ("cpu", "mps"):
        return device.type
    raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {str(device)!r}")


_LOCK_POLL_S = 0.1  # how often a process waiting for a timing lock tries again


class TimingLockError(PermissionError):
    """The timing lock cannot be used (a link, a directory or another user's file at its path): a fault of the
    machine, never of the candidate being timed (:func:`nas.train.machinery_fault`)."""


def _notify_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_lock_directory() -> Path:
    """The per-user directory of the timing locks, under the system's temporary directory (processes that time
    on one device must agree on it, so on one ``TMPDIR``)."""
    return Path(tempfile.gettempdir()) / f"nas-timing-locks-{os.getuid()}"


class DeviceLock:
    """The exclusive lock on one device that a timing window holds, across the processes of one machine.

    DESIGN.md: proxy trainings may share an accelerator (fractional Ray trials), timing windows never do. A step
    timed beside a neighbour's training or timing measures the neighbour too, so every timing of a device takes
    this lock: an ``fcntl.flock`` (exclusive) on ``nas-timing-<key>.lock`` (see :func:`lock_key`) in
    ``directory`` (None: :func:`default_lock_directory`). Ray workers on a node are processes of one machine, so
    this serializes their timings; trainings, which do not take it, go on beside a timing.

    The directory is created private (0o700) and must be this user's own directory, not a link; the lock file is
    opened without following a link, so a link planted at its path is refused, never followed; what cannot be
    used is a :class:`TimingLockError` in the project's words, naming the path. ``wait_s`` is how long acquiring
    took (None before). The lock is released on leaving the ``with`` block, also by an exception, and by the operating
    system if the process dies. Not re-entrant: a process that holds it and asks again (another ``DeviceLock`` on
    the same device) waits for itself.

    The holder writes its PID and host into the file, so that a process that has to wait says so: after
    ``notice_after_s`` one line to ``notify`` (default: stderr) names the lock and its holder, repeated every
    ``notice_every_s`` while the wait lasts (a silent wait reads as a hang).
    """

    def __init__(
        self,
        device: torch.device | str,
        *,
        directory: Path | str | None = None,
        notify: Callable[[str], None] | None = None,
        notice_after_s: float = 3.0,
        notice_every_s: float = 60.0,
    ) -> None:
        self.key = lock_key(device)
        self.directory = default_lock_directory() if directory is None else Path(directory)
        self.path = self.directory / f"nas-timing-{self.key}.lock"
        self.wait_s: float | None = None
        self._descriptor: int | None = None
        self._notify = notify or _notify_stderr
        self._notice_after_s, self._notice_every_s = notice_after_s, notice_every_s

    def __enter__(self) -> DeviceLock:
        if self._descriptor is not None:
            raise RuntimeError(f"the timing lock {self.path} is already held by this DeviceLock")
        descriptor = self._open()
        start = time.monotonic()
        try:
            self._acquire(descriptor, start)
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except BaseException:
            os.close(descriptor)
            raise
        self.wait_s = time.monotonic() - start
        self._descriptor = descriptor
        return self

    def _acquire(self, descriptor: int, start: float) -> None:
        """Takes the lock, polling while another process holds it and saying so when the wait is long."""
        next_notice = start + self._notice_after_s
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            now = time.monotonic()
            if now >= next_notice:
                self._notify(f"waiting for the timing lock {self.path} ({self._holder(descriptor)}) for "
                             f"{now - start:.0f} s: another process is timing on this device")
                next_notice = now + self._notice_every_s
            time.sleep(_LOCK_POLL_S)

    @staticmethod
    def _holder(descriptor: int) -> str:
        """Who holds the lock, as the holder wrote it (``pid N on HOST``), or that it cannot be known."""
        try:
            written = os.pread(descriptor, 200, 0).decode(errors="replace").strip()
        except OSError:
            written = ""
        return f"held by {written}" if written.startswith("pid ") else "its holder is not known"

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        descriptor, self._descriptor = self._descriptor, None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)

    def _open(self) -> int:
        """The lock file's descriptor, after checking the directory; refuses a link or a non-file at its path."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            raise TimingLockError(f"timing lock directory {self.directory} exists and is not a directory; remove "
                                  "it or choose another directory") from None
        except OSError as error:
            raise TimingLockError(f"cannot create the timing lock directory {self.directory}: "
                                  f"{os.strerror(error.errno) if error.errno else error}") from None
        status = os.lstat(self.directory)
        if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
            raise TimingLockError(
                f"timing lock directory {self.directory} must be a directory of this user (uid {os.getuid()}), "
                "not a link or another user's; remove it or choose another directory"
            )
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise TimingLockError(f"timing lock {self.path} is a symbolic link; refusing to follow it "
                                      "(remove it)") from None
            if error.errno == errno.EISDIR:
                raise TimingLockError(f"timing lock {self.path} is a directory, not a lock file; remove it") from None
            raise TimingLockError(f"cannot open the timing lock {self.path}: "
                                  f"{os.strerror(error.errno) if error.errno else error}") from None
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise TimingLockError(f"timing lock {self.path} is not a regular file; remove it")
        return descriptor
