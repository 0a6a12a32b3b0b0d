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
from typing import Any, Callable

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
from nas.step import build_training_step
from nas.step_cache import StepTimeCache, cache_key
from nas.storage import check_file_location, make_storage, storage_errors
from search_spaces.checks import check_int, check_real
from search_spaces.spec import ArchSpec

# The caps TimingConfig puts on its warmup and pairs, so a direct call refuses what a config would.
MAX_WARMUP = 1000
MAX_PAIRS = 1000

Timer = Callable[[Callable[[], Any], torch.device, int], float]


@dataclass(frozen=True)
class PairedTiming:
    """The candidate's step time relative to the reference's, from ``pairs`` pairs of interleaved windows.

    ``ratios`` holds one ratio per pair (candidate seconds per step over reference seconds per step), in run
    order: even pairs timed the candidate first, odd pairs the reference first. ``ratio`` is the estimate (see
    :func:`paired_ratio`), ``ratio_iqr`` the interquartile range of ``ratios`` (it includes what drift did to
    single pairs). ``step_time_s`` and ``reference_step_time_s`` are each network's median seconds per step over
    its windows; ``steps_per_window`` is (candidate, reference); ``warmup_steps`` each ran before timing.
    """

    ratio: float
    ratio_iqr: float
    ratios: tuple[float, ...]
    step_time_s: float
    reference_step_time_s: float
    pairs: int
    steps_per_window: tuple[int, int]
    warmup_steps: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples as lists), as a study attribute or a report stores it."""
        data = dataclasses.asdict(self)
        data["ratios"] = list(self.ratios)
        data["steps_per_window"] = list(self.steps_per_window)
        return data


def paired_ratio(
    candidate: Callable[[], Any],
    reference: Callable[[], Any],
    device: torch.device,
    *,
    warmup: int = 5,
    pairs: int = 7,
    min_window_s: float = 0.25,
    max_steps_per_window: int = 200,
    timer: Timer = time_window,
) -> PairedTiming:
    """Step time of ``candidate`` relative to ``reference`` on ``device``, from interleaved timed windows.

    Each of the two runs ``warmup`` steps first, the last of them timed alone to choose its steps per window
    (enough to last about ``min_window_s``, at most ``max_steps_per_window``, as :func:`nas.measure.time_step`
    does). Then
    ``pairs`` pairs of one candidate window and one reference window run in the order A B, B A, A B, ...

    Why this estimate: a slowdown both share within a pair (a co-tenant, a clock change) cancels in that pair's
    ratio. A drift over the run does not cancel inside one pair: the window that runs second is slowed by it, so
    A B pairs err one way and B A pairs the other by the same amount, to first order. The estimate is therefore
    the geometric mean of the median ratio of the A B pairs and that of the B A pairs (ABBA): the drift cancels
    between the two orders, and the medians keep a pair that straddled the start or end of a co-tenant's burst
    out. With one pair there is no B A pair and the ratio is that pair's.

    ``timer(step, device, steps)`` returns the seconds ``steps`` steps took (the device synchronized around
    them); tests inject a fake clock here.
    """
    check_int("warmup", warmup, 1, MAX_WARMUP)
    check_int("pairs", pairs, 1, MAX_PAIRS)
    check_real("min_window_s", min_window_s, 0.0, low_open=True)
    check_int("max_steps_per_window", max_steps_per_window, 1)
    steps = (candidate, reference)
    steps_per_window = tuple(
        _warm_up(step, device, warmup, min_window_s, max_steps_per_window, timer) for step in steps
    )
    seconds_per_step: tuple[list[float], list[float]] = ([], [])
    for pair in range(pairs):
        for which in (0, 1) if pair % 2 == 0 else (1, 0):
            seconds = timer(steps[which], device, steps_per_window[which])
            seconds_per_step[which].append(seconds / steps_per_window[which])
    ratios = tuple(a / b for a, b in zip(*seconds_per_step))
    ratio = statistics.median(ratios[0::2])  # candidate first
    if pairs > 1:
        ratio = math.sqrt(ratio * statistics.median(ratios[1::2]))  # reference first: the drift errs the other way
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if pairs > 1 else [ratios[0]] * 3
    return PairedTiming(
        ratio=ratio,
        ratio_iqr=quartiles[2] - quartiles[0],
        ratios=ratios,
        step_time_s=statistics.median(seconds_per_step[0]),
        reference_step_time_s=statistics.median(seconds_per_step[1]),
        pairs=pairs,
        steps_per_window=(steps_per_window[0], steps_per_window[1]),
        warmup_steps=warmup,
    )


def _warm_up(
    step: Callable[[], Any], device: torch.device, warmup: int, min_window_s: float, max_steps: int, timer: Timer
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
    ``settings.image_size`` already on the device; :func:`paired_ratio` runs ``settings.warmup``,
    ``settings.pairs`` and windows of ``settings.window_s``. ``settings`` must be resolved (:meth:`~nas.recipe.TimingConfig.resolved`). The caller
    holds the device's :class:`DeviceLock`. Memory is released before returning, also after a failure (an
    allocation that fails raises what the allocator raised; :func:`nas.measure.is_out_of_memory` recognizes it).
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
    # The schedule's steps per epoch only set the learning rate's value, never a step's work (as in `nas bench`).
    candidate_step, reference_step = (
        build_training_step(build_model(network, num_classes, in_channels), timed_recipe(recipe, settings.batch_size),
                            device=device, steps_per_epoch=BENCH_STEPS_PER_EPOCH)
        for network in (spec, reference)
    )
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    size = settings.image_size
    images = torch.randn(settings.batch_size, in_channels, size, size, device=device)
    images = images.to(memory_format=memory_format)  # (N, C, H, W), as the training batches come
    labels = torch.randint(0, num_classes, (settings.batch_size,), device=device)
    return paired_ratio(lambda: candidate_step(images, labels), lambda: reference_step(images, labels), device,
                        warmup=settings.warmup, pairs=settings.pairs, min_window_s=settings.window_s)


@dataclass(frozen=True)
class RelativeStepTime:
    """S/S0 as a trial records it (:class:`~nas.records.EvalResult`'s field names): the ratio and its spread, each
    network's median seconds per step, and where it came from: ``cached`` (read from the step-time cache, then
    ``pairs`` is None) or timed from ``pairs`` pairs of windows."""

    step_time_ratio: float
    step_time_ratio_iqr: float
    step_time_s: float
    reference_step_time_s: float
    cached: bool = False
    pairs: int | None = None

    def measurement(self) -> dict[str, float]:
        """The four measured fields, as the step-time cache and a trial's result keep them."""
        return {"step_time_ratio": self.step_time_ratio, "step_time_ratio_iqr": self.step_time_ratio_iqr,
                "step_time_s": self.step_time_s, "reference_step_time_s": self.reference_step_time_s}


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
    measured = RelativeStepTime(step_time_ratio=paired.ratio, step_time_ratio_iqr=paired.ratio_iqr,
                                step_time_s=paired.step_time_s, reference_step_time_s=paired.reference_step_time_s,
                                pairs=paired.pairs)
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
