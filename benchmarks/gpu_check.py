"""A GPU check, ready to run: every CUDA path of the project and the GPU rows of benchmarks/RESULTS.md, one table.

Run it first whenever a GPU is at hand (``bash benchmarks/gpu_check.sh`` is the entry point) and record the table
in RESULTS.md's "## GPU" section with the device it names. Each step is a small call into the project's API, run in
a fresh process of its own under a timeout: a step that fails or hangs is one FAIL row with one line of reason, and
the check goes on. The whole run keeps within ``--budget-s`` (default 450 s, under 8 minutes with start-up); a step
that no longer fits is SKIP. The table (step, what it checks, result, seconds) is printed at the end and, with
``--out FILE``, written there as markdown after every step, so a run cut short still leaves what it measured.
Each step's full output goes to ``--log-dir`` (default: a new temporary directory, printed).

A step that runs a benchmark script passes ``--json`` (``benchmarks/common.py``'s convention: the result as one
JSON object on stdout, the tables for people on stderr) and reads that object; the log keeps both streams.

``--dry-run`` runs every step on this CPU at tiny sizes (the ``tiny`` space, 32px, batch 4-8, one epoch, one or two
timed windows), and where the CPU cannot run a step in seconds (CUDA events, the minutes-long benchmark scripts)
checks that what it would call exists and accepts the arguments; every result then says "dry-run". It exits 0
only if every step is wired. ``--steps a,b`` runs a subset.

    bash benchmarks/gpu_check.sh --dry-run                     # CI: under 2 minutes on 2 CPU cores
    bash benchmarks/gpu_check.sh --out gpu.md --log-dir logs   # on a GPU, under 8 minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project from this tree, installed or not

from benchmarks.common import (  # noqa: E402
    add_device_argument,
    append_json_line,
    markdown_table,
    read_json_lines,
)

DEFAULT_BUDGET_S = 450.0  # the whole run; with interpreter start-up and the table it stays under 8 minutes
MIN_STEP_S = 5.0  # a step with less time than this left in the budget is skipped, not started
OK, FAIL, SKIP = "ok", "FAIL", "SKIP"
REASON_CHARS = 240  # a FAIL row's reason is one line, at most this long


class CheckFailed(AssertionError):
    """A step ran but what it measured is wrong; the message is the row's one-line reason."""


@dataclass
class Row:
    """One line of the table. ``status`` is ok, FAIL or SKIP; ``result`` the number(s) or the reason."""

    step: str
    check: str
    result: str
    status: str = OK
    seconds: float = 0.0


class Context:
    """What a step function gets in its worker process: the mode, the device, and :meth:`row` / :meth:`attempt` to
    report rows. Every row is appended to ``rows_file`` at once, so a step killed by its timeout keeps the rows it
    reported before."""

    def __init__(self, step: Step, *, dry_run: bool, device: str, rows_file: Path | None) -> None:
        self.step = step
        self.dry_run = dry_run
        self.device = "cpu" if dry_run else device
        self.rows_file = rows_file
        self.rows: list[Row] = []
        self._last = time.perf_counter()

    def row(self, result: str, *, label: str | None = None, check: str | None = None, status: str = OK,
            seconds: float | None = None) -> Row:
        now = time.perf_counter()
        if self.dry_run and status == OK and not result.startswith("dry-run"):
            result = f"dry-run: {result}"
        row = Row(label or self.step.name, check or self.step.checks, one_line(result), status,
                  now - self._last if seconds is None else seconds)
        self._last = now
        self.rows.append(row)
        if self.rows_file is not None:
            append_json_line(self.rows_file, dataclasses.asdict(row))
        print(f"[{row.status}] {row.step}: {row.result}", flush=True)
        return row

    def attempt(self, label: str, check: str, function: Callable[[], str]) -> None:
        """Runs ``function`` (returning the result text) as its own row: a failure is that row's FAIL, and the step
        goes on with its next row."""
        start = time.perf_counter()
        try:
            result = function()
        except Exception as error:  # one sub-check failing must not hide the others
            self.row(reason(error), label=label, check=check, status=FAIL, seconds=time.perf_counter() - start)
            return
        self.row(result, label=label, check=check, seconds=time.perf_counter() - start)


@dataclass(frozen=True)
class Step:
    """A step of the check: ``function(context)`` reports its rows; ``timeout_s`` on the GPU, ``dry_timeout_s`` in
    a dry run (both also capped by what is left of the budget)."""

    name: str
    checks: str
    function: Callable[[Context], None]
    timeout_s: float
    dry_timeout_s: float


def one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def reason(error: BaseException) -> str:
    """A failure as one line: the check's message, or the exception's type and first line."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else repr(error)
    return one_line(first if isinstance(error, CheckFailed) else f"{type(error).__name__}: {first}")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def check_call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Checks that ``function`` exists and accepts these arguments, without calling it (what a dry run can do
    where the CPU cannot run the call)."""
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError as error:
        raise CheckFailed(f"{function.__module__}.{function.__qualname__} does not accept the check's arguments: "
                          f"{error}") from None


# ----------------------------------------------------------------------------------------------- the steps


def step_device(context: Context) -> None:
    from importlib import metadata

    import torch

    from nas.measure import describe_device, resolve_device

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "NOT INSTALLED"

    software = f"Python {sys.version.split()[0]}, optuna {version('optuna')}, ray {version('ray')}"
    if context.dry_run:
        check_call(resolve_device, "cuda")
        cuda = f"CUDA build {torch.version.cuda}" if torch.version.cuda else "CPU-only torch build"
        context.row(f"{describe_device(resolve_device('cpu'))}; {cuda}, CUDA available: "
                    f"{torch.cuda.is_available()}; {software}")
        return
    require(torch.cuda.is_available(),
            f"no CUDA device: torch {torch.__version__} "
            + ("is a CPU-only build" if torch.version.cuda is None else f"(CUDA {torch.version.cuda}) sees no GPU"))
    device = resolve_device(context.device)
    product = torch.ones(256, 256, device=device) @ torch.ones(256, 256, device=device)  # the device computes
    torch.cuda.synchronize(device)
    require(float(product[0, 0]) == 256.0, f"a 256x256 matrix product on {device} gave {float(product[0, 0])}")
    context.row(f"{describe_device(device)}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.device_count()} "
                f"GPU(s), bf16 supported: {torch.cuda.is_bf16_supported()}; {software}")


class EventCounter:
    """Counts ``torch.cuda.Event`` constructions while active: the one timing protocol uses CUDA events on a GPU
    (``nas.measure.time_window``), so a timing that created none did not time with them."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> EventCounter:
        import torch

        self._original = original = torch.cuda.Event
        counter = self

        class CountingEvent(original):  # a subclass, so that isinstance(x, torch.cuda.Event) still holds
            def __new__(cls, *args: Any, **kwargs: Any) -> Any:
                counter.count += 1
                return super().__new__(cls, *args, **kwargs)

        torch.cuda.Event = CountingEvent
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.cuda.Event = self._original


def _check_cuda_events(context: Context, events: int, windows: int) -> str:
    """Checks that ``windows`` timed windows (and the one warm-up estimate) were timed with CUDA events."""
    import torch

    from nas.measure import time_window

    if context.dry_run:
        require(hasattr(torch.cuda, "Event") and "torch.cuda.Event" in inspect.getsource(time_window),
                "nas.measure.time_window does not time with torch.cuda.Event")
        return "CUDA events checked on a GPU only"
    require(events >= 2 * windows, f"CUDA-event timing not used: {events} torch.cuda.Event for {windows} windows")
    return f"{events} CUDA events"


BENCH_SETTINGS = (("none", True), ("none", False), ("bf16", True), ("bf16", False), ("fp16", True), ("fp16", False))
_DTYPE_NAMES = {"none": "none", "bf16": "bfloat16", "fp16": "float16"}


def step_bench(context: Context) -> None:
    from nas.measure import benchmark_spec
    from search_spaces import presets

    if context.dry_run:
        spec, sizes = presets.get("tiny"), dict(image_size=32, batch_size=4, num_classes=10, warmup=1, repeats=2,
                                                  min_window_s=0.01, threads=1)
    else:
        spec, sizes = presets.get("efficientnetv2-s"), dict(image_size=224, batch_size=64, num_classes=1000,
                                                            warmup=5, repeats=5, min_window_s=0.2)
    images_per_second: dict[tuple[str, bool], float] = {}
    for amp, channels_last in BENCH_SETTINGS:
        label = f"bench {'fp32' if amp == 'none' else amp} {'channels_last' if channels_last else 'NCHW'}"

        def measure(amp: str = amp, channels_last: bool = channels_last) -> str:
            with EventCounter() as events:
                result = benchmark_spec(spec, device=context.device, amp=amp, channels_last=channels_last, **sizes)
            step = result.step
            require(result.amp == _DTYPE_NAMES[amp], f"asked for amp {amp}, the step ran {result.amp}")
            require(result.channels_last == channels_last, f"channels_last {result.channels_last}, asked {channels_last}")
            require(len(step.window_s) == sizes["repeats"] and all(w > 0 for w in step.window_s),
                    f"{len(step.window_s)} timed windows, expected {sizes['repeats']} positive ones")
            require(math.isfinite(result.images_per_second) and result.peak_memory_bytes > 0,
                    f"images/s {result.images_per_second}, peak memory {result.peak_memory_bytes} bytes")
            timed_with = _check_cuda_events(context, events.count, sizes["repeats"] + 1)
            images_per_second[amp, channels_last] = result.images_per_second
            return (f"{result.images_per_second:,.0f} img/s, step {step.median_s * 1e3:.1f} ms (IQR "
                    f"{step.relative_spread:.1%}), peak {result.peak_memory_bytes / 2**30:.2f} GiB, "
                    f"{len(step.window_s)} windows x {step.steps_per_window} steps, {timed_with}")

        context.attempt(label, f"benchmark_spec {spec.name} {sizes['image_size']}px batch {sizes['batch_size']}: "
                               "amp, memory format, windows, peak memory, CUDA-event timing", measure)
    if len(images_per_second) == len(BENCH_SETTINGS):
        fp32, bf16, fp16 = (images_per_second[amp, True] for amp in ("none", "bf16", "fp16"))
        nchw = images_per_second["bf16", False]
        context.row(f"bf16 {bf16 / fp32:.2f}x and fp16 {fp16 / fp32:.2f}x fp32 (channels_last); channels_last "
                    f"{bf16 / nchw:.2f}x NCHW (bf16)", label="bench summary",
                    check="speed-ups from the rows above (images/s ratios)", seconds=0.0)


class CallRecorder:
    """Replaces ``module.name`` by a wrapper that records the device of each call's first tensor argument."""

    def __init__(self, module: Any, name: str) -> None:
        self.module, self.name = module, name
        self.devices: list[str] = []

    def __enter__(self) -> CallRecorder:
        self._original = original = getattr(self.module, self.name)

        def recording(images: Any, *args: Any, **kwargs: Any) -> Any:
            self.devices.append(images.device.type)
            return original(images, *args, **kwargs)

        setattr(self.module, self.name, recording)
        return self

    def __exit__(self, *exc: Any) -> None:
        setattr(self.module, self.name, self._original)


def _train_sizes(context: Context, image_size: int, num_images: int = 8192) -> tuple[str, dict[str, Any]]:
    """The synthetic data and the recipe's sizes of the short trainings: tiny on CPU, a few hundred steps on GPU."""
    if context.dry_run:
        return (f"synthetic:num_classes=4,num_images=64,image_size={image_size}",
                dict(batch_size=8, eval_batch_size=64, threads=1, timing_warmup=1, timing_repeats=1,
                     bn_recalibration_batches=2))
    return (f"synthetic:num_classes=10,num_images={num_images},image_size={image_size}",
            dict(batch_size=128, timing_warmup=3, timing_repeats=3))


def step_augment(context: Context) -> None:
    import nas.data
    import nas.train
    from nas.data import load_data
    from nas.recipe import TrainConfig
    from nas.train import train_and_evaluate
    from search_spaces import presets

    source, sizes = _train_sizes(context, 32)
    data = load_data(source, seed=0)
    config = TrainConfig(epochs=1, device=context.device, randaugment_magnitude=9.0, mixup_alpha=0.2, **sizes)
    with CallRecorder(nas.data, "rand_augment") as randaugment, CallRecorder(nas.train, "mixup") as mixup:
        result = train_and_evaluate(presets.get("tiny"), data, config)
    require(result.ok, f"training failed: {result.failure_reason}")
    require(result.accuracy is not None and math.isfinite(result.accuracy), f"accuracy {result.accuracy}")
    require(math.isfinite(result.final_loss), f"final loss {result.final_loss}")
    for name, recorder in (("RandAugment", randaugment), ("mixup", mixup)):
        require(recorder.devices, f"{name} was never called")
        elsewhere = sorted(set(recorder.devices) - {context.device.split(':')[0]})
        require(not elsewhere, f"{name} ran on {elsewhere}, not on {context.device}")
    context.row(f"A {result.accuracy:.3f}, loss {result.final_loss:.3f}; RandAugment (magnitude 9) in "
                f"{len(randaugment.devices)} and mixup (alpha 0.2) in {len(mixup.devices)} batches on "
                f"{context.device}; {result.history[-1].images_per_second:,.0f} img/s, "
                f"peak {result.peak_memory_bytes / 2**30:.2f} GiB")


def step_progressive(context: Context) -> None:
    from nas.data import load_data
    from nas.progressive import ProgressiveConfig, progressive_schedule
    from nas.recipe import TrainConfig
    from nas.train import train_and_evaluate
    from search_spaces import presets

    sizes_px = (16, 32) if context.dry_run else (64, 128)
    source, sizes = _train_sizes(context, sizes_px[1], num_images=4096)  # made on the CPU: fewer at 128px
    data = load_data(source, seed=0)
    progressive = ProgressiveConfig(num_stages=3, image_size=sizes_px, dropout=(0.1, 0.3),
                                    randaugment_magnitude=(5.0, 15.0), mixup_alpha=(0.0, 0.2))
    config = TrainConfig(epochs=3, device=context.device, progressive=progressive, **sizes)
    result = train_and_evaluate(presets.get("tiny"), data, config)
    require(result.ok, f"training failed: {result.failure_reason}")
    require(result.accuracy is not None and math.isfinite(result.accuracy), f"accuracy {result.accuracy}")
    expected = [stage.image_size for stage in progressive_schedule(progressive, 3)]
    trained = [epoch.image_size for epoch in result.history]
    require(trained == expected and len(set(trained)) == 3, f"trained at {trained} px, the schedule says {expected}")
    context.row(f"sizes {' -> '.join(map(str, trained))} px; img/s per stage "
                f"{', '.join(f'{epoch.images_per_second:,.0f}' for epoch in result.history)}; A {result.accuracy:.3f}")


def step_paired(context: Context) -> None:
    import random

    from nas.measure import resolve_device
    from nas.recipe import TimingConfig
    from nas.timing import DeviceLock, time_relative
    from search_spaces import presets

    if context.dry_run:
        import torch

        torch.set_num_threads(1)  # as the other dry-run steps: two threads on a shared 2-core machine stall
        space, batch, classes = presets.get_space("tiny"), 4, 10
        settings = TimingConfig(warmup=1, pairs=2, window_s=0.01, precision=None, max_stall=None)
    else:
        space, batch, classes = presets.get_space("efficientnetv2-s"), 64, 1000
        settings = TimingConfig()
    reference = space.baseline
    candidate = space.sample(random.Random(0))
    settings = settings.resolved(image_size=reference.train_image_size, batch_size=batch)
    device = resolve_device(context.device)
    with EventCounter() as events, DeviceLock(device) as lock:
        paired = time_relative(candidate, reference, settings, device=device, num_classes=classes, in_channels=3)
    require(len(paired.ratios) == settings.pairs and all(r > 0 and math.isfinite(r) for r in paired.ratios),
            f"ratios {paired.ratios} for {settings.pairs} pairs")
    require(math.isfinite(paired.ratio) and paired.ratio > 0, f"ratio {paired.ratio}")
    timed_with = _check_cuda_events(context, events.count, 2 * (settings.pairs + 1))
    context.row(f"S/S0 {paired.ratio:.3f} (IQR {paired.ratio_iqr:.3f}, {paired.pairs} pairs), S "
                f"{paired.step_time_s * 1e3:.1f} ms vs S0 {paired.reference_step_time_s * 1e3:.1f} ms, "
                f"{space.name} sample vs backbone at {settings.image_size}px batch {batch} amp {settings.amp}; "
                f"lock {lock.path.name} (waited {lock.wait_s:.2f} s); {timed_with}")


class LockWatch:
    """Polls the timing locks in ``directory`` from another thread: a non-blocking ``flock`` that fails means a
    worker holds the lock at that moment (one that succeeds is released at once). Proves the timing windows took the
    lock without reaching into the workers."""

    def __init__(self, directory: Path, interval_s: float = 0.02) -> None:
        self.directory, self.interval_s = directory, interval_s
        self.held: dict[str, int] = {}
        self._stop = False

    def __enter__(self) -> LockWatch:
        import threading

        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        self._thread.join()

    def _poll(self) -> None:
        import fcntl

        while not self._stop:
            for path in self.directory.glob("nas-timing-*.lock") if self.directory.is_dir() else ():
                descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(descriptor, fcntl.LOCK_UN)
                except BlockingIOError:
                    self.held[path.name] = self.held.get(path.name, 0) + 1
                finally:
                    os.close(descriptor)
            time.sleep(self.interval_s)


def step_campaign(context: Context) -> None:
    work = Path(tempfile.mkdtemp(prefix="gpuchk-", dir="/tmp"))  # short: Ray's socket paths live under it
    previous = Path.cwd()
    # A fresh temporary directory for this process and the Ray workers it starts (they inherit the environment):
    # the timing locks (nas.timing.default_lock_directory) and Ray's session are then this campaign's alone.
    os.environ["TMPDIR"] = str(work)
    tempfile.tempdir = None
    os.chdir(work)  # Tune's runs/ray goes here
    try:
        _campaign(context, work)
    finally:
        import ray

        ray.shutdown()
        os.chdir(previous)
        shutil.rmtree(work, ignore_errors=True)


def _campaign(context: Context, work: Path) -> None:
    import io

    import optuna

    from nas.campaign import CampaignConfig, check_placeable, run_campaign
    from nas.recipe import TimingConfig, TrainConfig
    from nas.runner import RayExecutor
    from nas.timing import default_lock_directory
    from nas.train import train_and_evaluate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log = work / "trainings.jsonl"

    def recording_trainer(spec: Any, data: Any, config: Any, rungs: Any = None) -> Any:
        """train_and_evaluate, noting where and when each proxy training ran (a closure: Ray pickles it by value)."""
        start = time.time()
        result = train_and_evaluate(spec, data, config, rungs=rungs)
        append_json_line(log, {"pid": os.getpid(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                "device": config.device, "start": start, "end": time.time()})
        return result

    source, sizes = _train_sizes(context, 32)
    if context.dry_run:
        gpus, cpus, timing = 0, 1, TimingConfig(warmup=1, pairs=1, window_s=0.01, precision=None, max_stall=None)
        sizes = {key: value for key, value in sizes.items() if key in ("batch_size", "eval_batch_size",
                                                                      "bn_recalibration_batches")}
        # the fractional-GPU settings a GPU run uses: accepted by the config, placeable on a node with one GPU
        CampaignConfig(space="tiny", trials=3, workers=2, gpus_per_trial=0.5)
        check_placeable([{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0}}], cpus=2, gpus=0.5)
    else:
        gpus, cpus, timing = 0.5, 2, TimingConfig()
        sizes = {"batch_size": sizes["batch_size"]}
    config = CampaignConfig(space="tiny", data=source, trials=3, workers=2, cpus_per_trial=cpus, gpus_per_trial=gpus,
                            controller="random", study="gpu-check", storage=f"sqlite:///{work / 'study.db'}",
                            train=TrainConfig(epochs=1, **sizes), timing=timing)
    out = io.StringIO()
    lock_directory = default_lock_directory()
    require(lock_directory.is_relative_to(work), f"the timing locks are in {lock_directory}, not under {work}")
    with LockWatch(lock_directory) as watch:
        outcome = run_campaign(config, RayExecutor(trainer=recording_trainer), out=out)
    print(out.getvalue(), flush=True)
    study = optuna.load_study(study_name=config.study, storage=config.storage_url)
    trials = study.get_trials(deepcopy=False)
    states = [trial.state.name for trial in trials]
    require(outcome.finished == 3 and states == ["COMPLETE"] * 3,
            f"trials {states}: {[trial.user_attrs.get('failure_reason') for trial in trials]}")
    devices = {str(trial.user_attrs.get("device", "")).split(" ")[0] for trial in trials}
    expected = "cpu" if context.dry_run else "cuda"
    require(all(device.startswith(expected) for device in devices), f"trials ran on {sorted(devices)}")
    locks = sorted(path.name for path in lock_directory.glob("nas-timing-*.lock"))
    require(locks, f"no timing lock file in {lock_directory}")
    require(sum(watch.held.values()) > 0, f"no timing held a lock while polled ({', '.join(locks)})")
    ratios = "/".join(f"{trial.user_attrs.get('step_time_ratio', float('nan')):.3f}" for trial in trials)
    trainings = read_json_lines(log)
    candidates = sorted(trainings, key=lambda entry: entry["start"])[1:]
    overlap = (min(c["end"] for c in candidates) - max(c["start"] for c in candidates)) if len(candidates) == 2 else 0
    shared = sorted({str(entry["visible"]) for entry in candidates})
    where = f"{expected}, gpus_per_trial {gpus:g}" + ("" if context.dry_run else f", CUDA_VISIBLE_DEVICES {shared}")
    context.row(f"3/3 COMPLETE on {where}; S/S0 {ratios}; lock {', '.join(locks)} seen held in "
                f"{sum(watch.held.values())} polls; the 2 candidates' trainings "
                + (f"overlapped {overlap:.1f} s" if overlap > 0 else "ran one after the other")
                + ("; gpus_per_trial 0.5 accepted and placeable on a 1-GPU node" if context.dry_run else ""))


# --- the benchmark scripts of benchmarks/RESULTS.md's GPU rows, each run as its own command -----------------------


def _run_script(arguments: Sequence[str]) -> str:
    """Runs ``python ARGUMENTS`` in the repository; returns its standard output (also echoed to the log)."""
    command = [sys.executable, *arguments]
    print("$ " + " ".join(command), flush=True)
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    print(completed.stdout + completed.stderr, flush=True)
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.splitlines() if line.strip()] or ["(no output)"]
        raise CheckFailed(f"exit {completed.returncode}: {lines[-1]}")
    return completed.stdout


def _run_json(arguments: Sequence[str]) -> dict[str, Any]:
    """Runs ``python ARGUMENTS --json``; returns the JSON object it printed."""
    output = _run_script([*arguments, "--json"])
    try:
        return json.loads(output)
    except json.JSONDecodeError:
        raise CheckFailed(f"`{' '.join(arguments)} --json` printed no JSON object: {output[-120:]!r}") from None


def _check_flags(arguments: Sequence[str]) -> str:
    """A dry run's check of a script too slow for this CPU: its ``--help`` lists every flag the GPU run passes."""
    script, flags = arguments[0], [argument for argument in arguments if argument.startswith("--")] + ["--json"]
    text = _run_script([script, "--help"])
    missing = [flag for flag in flags if flag not in text]
    require(not missing, f"{script} does not accept {', '.join(missing)}")
    return f"{script} accepts {' '.join(flags)} (--help); run on a GPU only"


def step_nas_bench(context: Context) -> None:
    if context.dry_run:
        arguments = ["tiny", "--device", "cpu", "--batch-size", "4", "--image-size", "32", "--num-classes", "10",
                     "--warmup", "1", "--repeats", "2", "--threads", "1"]
    else:
        arguments = ["efficientnetv2-s", "--device", context.device, "--batch-size", "128"]
    result = _run_json(["-m", "nas", "bench", *arguments, "--inference"])
    inference, step = result.get("inference_images_per_second"), result["step"]
    require(inference is not None and math.isfinite(inference), f"no inference images/s in {sorted(result)}")
    context.row(f"train {result['images_per_second']:,.1f} img/s (step {step['median_s'] * 1e3:.1f} ms, IQR "
                f"{step['relative_spread']:.1%}), inference {inference:,.1f} img/s, amp {result['amp']}, "
                f"{result['image_size']}px batch {result['batch_size']}, peak {result['peak_memory_bytes'] / 2**30:.2f} GiB")


def step_fused_placement(context: Context) -> None:
    arguments = ["experiments/fused_placement.py", "--device", context.device, "--image-size", "380",
                 "--batch-size", "32", "--repeats", "3"]
    if context.dry_run:
        context.row(_check_flags(arguments))
        return
    result = _run_json(arguments)
    context.row(f"train img/s at {result['image_size']}px batch {result['batch_size']}: "
                + ", ".join(f"{row['placement']} {row['images_per_second']:.2f}" for row in result["rows"]))


def step_bench_trainer(context: Context) -> None:
    if context.dry_run:
        arguments = ["--device", "cpu", "--batch-size", "8", "--epochs", "1", "--warmup-images", "16", "--threads", "1",
                     "--data", "synthetic:num_images=96,image_size=32"]
    else:
        arguments = ["--device", context.device, "--batch-size", "512"]
    loops = _run_json(["benchmarks/bench_trainer.py", *arguments])["loops"]
    context.row("img/s " + ", ".join(f"{loop['loop'].split(':')[0]} {loop['images_per_second']:,.0f} "
                                     f"({loop['vs_plain']:.2f}x)" for loop in loops))


def step_bench_stability(context: Context) -> None:
    """The short form of the stability benchmark: paired against unpaired S/S0, quiet and beside a CPU-bound
    co-tenant, on the efficientnetv2-s space."""
    arguments = ["benchmarks/bench_stability.py", "--device", context.device, "--space", "efficientnetv2-s",
                 "--image-size", "128", "--batch-size", "64", "--specs", "4", "--pairs", "5", "--max-timing-s", "10"]
    if context.dry_run:
        context.row(_check_flags(arguments))
        return
    result = _run_json(arguments)
    paired, unpaired = (f"{name}: median |change| {result[name]['median_change']:.1%}, max |change| "
                        f"{result[name]['max_change']:.1%}, Spearman {result[name]['spearman']:.3f}"
                        for name in ("paired", "unpaired"))
    verdict = "met" if result["paired"]["targets_met"] else "NOT met"
    context.row(f"{paired}, targets {verdict}; {unpaired} ({len(result['specs'])} specs, {result['space']} space, "
                f"{result['image_size']}px, batch {result['batch_size']}, {result['pairs']} pairs)")


def step_timing_settings(context: Context) -> None:
    arguments = ["benchmarks/bench_timing_settings.py", "--device", context.device, "--tiny-batch-size", "256",
                 "--b4-batch-size", "64", "--rounds", "1", "--repeats", "2"]
    if context.dry_run:
        context.row(_check_flags(arguments))
        return
    context.row("; ".join(f"{group['name']}: Spearman {group['spearman']:.3f}, Kendall tau-b "
                          f"{group['kendall_tau_b']:.3f}, {group['order_flips']} of {group['pairs']} pairs flip"
                          for group in _run_json(arguments)["groups"]))


def step_ddp(context: Context) -> None:
    """`torchrun --nproc-per-node 1 -m nas train`: the data-parallel machinery on one device (NCCL's process group,
    DDP, the checkpoint gathering the ranks' generators with all_gather_object), then a resume that reads that
    checkpoint back and evaluates. A smoke test: one rank's batch norm has nothing to synchronize, and the exact
    resume of an interrupted multi-rank run is tests/nas/test_distributed.py's (CPU, gloo)."""
    source, sizes = _train_sizes(context, 32)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch) / "run.pt"
        arguments = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "nas", "train",
                     "tiny", "--data", source, "--epochs", "2", "--batch-size", str(sizes["batch_size"]),
                     "--device", context.device, "--sync-bn", "--checkpoint", str(checkpoint)]
        if context.dry_run:
            arguments += ["--threads", "1"]
        first = _run_json(arguments)
        require(first["status"] == "ok", f"training failed: {first['failure_reason']}")
        state = _checkpoint_ranks(checkpoint)
        resumed = "resume: tests/nas/test_distributed.py on CPU"
        if not context.dry_run:
            again = _run_json([*arguments, "--resume"])
            require(again["status"] == "ok", f"the resume failed: {again['failure_reason']}")
            resumed = f"its resume read it back and evaluated A {again['accuracy']:.3f}"
    context.row(f"1 rank: A {first['accuracy']:.3f}, {first['history'][-1]['images_per_second']:,.0f} img/s, "
                f"checkpoint of {state} rank(s), {resumed}; device {first['device']}")


def _checkpoint_ranks(path: Path) -> int:
    import torch

    from nas.train import checkpoint_world_size

    state = torch.load(path, map_location="cpu", weights_only=True)
    require("ranks" in state, f"{path} holds no ranks' generators")
    return checkpoint_world_size(state)


def step_streaming(context: Context) -> None:
    """`nas train` on a generated JPEG folder, cached and streamed (DataLoader workers, pinned memory), at the
    same size: both train, and the streamed run's img/s beside the cached one's."""
    from benchmarks.bench_ddp import make_folder

    count, size = (40, 16) if context.dry_run else (4000, 128)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "folder"
        make_folder(folder, count)
        common = ["-m", "nas", "train", "tiny", "--data", f"imagefolder:{folder}", "--epochs", "1", "--image-size",
                  str(size), "--device", context.device, "--batch-size", "8" if context.dry_run else "128"]
        if context.dry_run:
            common += ["--threads", "1"]
        results = {arm: _run_json([*common, *extra]) for arm, extra in
                   (("cached", []), ("streamed", ["--stream", "--loader-workers", "2" if context.dry_run else "8"]))}
    for arm, result in results.items():
        require(result["status"] == "ok", f"the {arm} run failed: {result['failure_reason']}")
    context.row(", ".join(f"{arm} {result['history'][0]['images_per_second']:,.0f} img/s" for arm, result in
                          results.items()) + f" ({count} JPEGs at {size}px, 1 epoch, A cached "
                f"{results['cached']['accuracy']:.3f} / streamed {results['streamed']['accuracy']:.3f})")


STEPS = (
    Step("device", "torch and CUDA versions, the GPU's name; a matrix product on it", step_device, 60, 60),
    Step("bench", "fp32 / bf16 / fp16 autocast x channels_last on and off", step_bench, 150, 90),
    Step("augment", "on-device RandAugment and mixup in a 1-epoch train_and_evaluate", step_augment, 90, 60),
    Step("progressive", "progressive resizing: 3 stages, image size per epoch follows the schedule",
         step_progressive, 90, 60),
    Step("paired-ratio", "time_relative: S/S0 from interleaved windows at target settings, in the device lock",
         step_paired, 90, 60),
    Step("campaign", "3 trials (baseline + 2) through RayExecutor, 2 workers, fractional GPUs, timing lock",
         step_campaign, 180, 120),
    Step("nas-bench", "`nas bench ... --inference --json` (RESULTS.md GPU row)", step_nas_bench, 90, 60),
    Step("fused-placement", "experiments/fused_placement.py, EfficientNetV2 Table 3 (RESULTS.md GPU row)",
         step_fused_placement, 150, 60),
    Step("bench-trainer", "benchmarks/bench_trainer.py, our loop vs a DataLoader loop (RESULTS.md GPU row)",
         step_bench_trainer, 120, 90),
    Step("bench-stability", "benchmarks/bench_stability.py, short: paired vs unpaired S/S0, quiet and loaded",
         step_bench_stability, 180, 60),
    Step("timing-settings", "benchmarks/bench_timing_settings.py: rank of S at proxy vs target settings",
         step_timing_settings, 150, 60),
    Step("ddp", "torchrun -m nas train, 1 rank: NCCL, DDP, the ranks' checkpoint read back by a resume",
         step_ddp, 120, 60),
    Step("streaming", "nas train on a JPEG folder, cached vs streamed by DataLoader workers", step_streaming,
         150, 60),
)
STEP_NAMES = tuple(step.name for step in STEPS)


# ----------------------------------------------------------------------------------------------- the driver


def run_worker(name: str, *, dry_run: bool, device: str, rows_file: Path | None, fail: bool = False,
               hang: bool = False) -> list[Row]:
    """Runs one step in this process (a worker the driver started); a step that raises is one FAIL row."""
    step = next(step for step in STEPS if step.name == name)
    context = Context(step, dry_run=dry_run, device=device, rows_file=rows_file)
    try:
        if hang:
            time.sleep(10**6)
        if fail:
            raise RuntimeError("injected failure (--fail-step)")
        step.function(context)
        if not context.rows:
            raise CheckFailed("the step reported nothing")
    except Exception as error:  # the driver shows it as one FAIL row and goes on with the next step
        import traceback

        traceback.print_exc()
        context.row(reason(error), status=FAIL)
    return context.rows


def _read_rows(path: Path) -> list[Row]:
    """The rows a step's worker recorded (a line its kill cut short is skipped)."""
    rows = []
    for record in read_json_lines(path):
        try:
            rows.append(Row(**record))
        except TypeError:
            print(f"{path}: skipping a record that is not a row: {record}", file=sys.stderr)
    return rows


def run_step(step: Step, *, timeout_s: float, dry_run: bool, device: str, log_dir: Path, fail: bool = False,
             hang: bool = False, budget_capped: bool = False) -> list[Row]:
    """Runs ``step`` in a fresh process (its own process group, killed whole on timeout) and returns its rows;
    a timeout or a crash is a FAIL row after the rows it reported. A timeout that the run's budget set
    (``budget_capped``), not the step's own, is a SKIP: the step was not wrong, the run was out of time."""
    rows_file = log_dir / f"{step.name}.rows.jsonl"
    rows_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", step.name, "--rows-file", str(rows_file),
               "--device", device]
    command += ["--dry-run"] * dry_run + ["--fail-step", step.name] * fail + ["--hang-step", step.name] * hang
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                       PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with open(log_dir / f"{step.name}.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                   start_new_session=True)
        try:
            returncode: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
            _kill_group(process)
    seconds = time.monotonic() - start
    rows = _read_rows(rows_file)
    if returncode is None:
        if budget_capped:
            rows.append(Row(step.name, step.checks, f"stopped after {timeout_s:.0f} s at the end of the run's "
                            "budget (--budget-s); rows above are what it measured", SKIP, seconds))
        else:
            rows.append(Row(step.name, step.checks, f"timed out after {timeout_s:.0f} s (killed)", FAIL, seconds))
    elif returncode != 0 or not rows:
        lines = [line for line in (log_dir / f"{step.name}.log").read_text(errors="replace").splitlines()
                 if line.strip()] or ["(no output)"]
        rows.append(Row(step.name, step.checks, one_line(f"worker exit {returncode}: {lines[-1]}"), FAIL, seconds))
    elif len(rows) == 1:
        rows[0].seconds = seconds  # a one-row step: the whole process, imports and start-up included
    return rows


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM to the step's process group (the worker and what it started), SIGKILL if it lingers."""
    for signum, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_checks(steps: Sequence[Step], *, dry_run: bool, device: str, log_dir: Path, budget_s: float,
               max_step_s: float | None = None, fail_step: str | None = None, hang_step: str | None = None,
               on_step: Callable[[list[Row]], None] = lambda rows: None) -> list[Row]:
    """Runs ``steps`` in order within ``budget_s``; ``on_step`` gets the rows so far after each step."""
    deadline = time.monotonic() + budget_s
    rows: list[Row] = []
    device_failed = False
    for step in steps:
        own = min(step.dry_timeout_s if dry_run else step.timeout_s, max_step_s or math.inf)
        timeout = min(own, deadline - time.monotonic())
        if device_failed:
            rows.append(Row(step.name, step.checks, "the device step failed: nothing to run on", SKIP))
        elif timeout < MIN_STEP_S:
            rows.append(Row(step.name, step.checks, f"no time left in the {budget_s:.0f} s budget", SKIP))
        else:
            print(f"--- {step.name} (timeout {timeout:.0f} s)", flush=True)
            step_rows = run_step(step, timeout_s=timeout, dry_run=dry_run, device=device, log_dir=log_dir,
                                 fail=step.name == fail_step, hang=step.name == hang_step, budget_capped=timeout < own)
            for row in step_rows:
                print(f"{row.status:>4}  {row.step}: {row.result}  ({row.seconds:.1f} s)", flush=True)
            rows += step_rows
            device_failed = step.name == "device" and not dry_run and any(row.status == FAIL for row in step_rows)
        on_step(rows)
    return rows


def markdown(rows: Sequence[Row], *, dry_run: bool, wall_s: float, complete: bool = True) -> str:
    """The table as markdown, under a line naming the device, the code and the date."""
    device = next((row.result for row in rows if row.step == "device" and row.status == OK), "unknown device")
    failed = sum(row.status == FAIL for row in rows)
    skipped = sum(row.status == SKIP for row in rows)
    mode = "dry run on CPU" if dry_run else "GPU run"
    state = f"{len(rows)} rows, {failed} FAIL, {skipped} SKIP" + ("" if complete else " (in progress)")
    cells = [(row.step, row.check, row.result if row.status == OK else f"**{row.status}** {row.result}",
              f"{row.seconds:.1f}") for row in rows]
    table = markdown_table(("step", "checks", "result", "s"), cells, align="lllr")
    return (f"GPU check ({mode}), {datetime.date.today().isoformat()}, code {_commit()}, {wall_s:.0f} s; {state}\n"
            f"Device: {device.removeprefix('dry-run: ')}\n\n{table}\n")


def _commit() -> str:
    try:
        completed = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                   text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return completed.stdout.strip() or "unknown"


def _step_list(text: str) -> list[Step]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STEP_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown step(s) {unknown}; steps are {', '.join(STEP_NAMES)}")
    return [step for step in STEPS if step.name in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on this CPU at tiny sizes (CI)")
    parser.add_argument("--steps", type=_step_list, default=list(STEPS), metavar="A,B",
                        help=f"run these steps only (of: {', '.join(STEP_NAMES)})")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the table there as markdown")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--log-dir", type=Path, metavar="DIR", help="each step's output (default: a new temp dir)")
    add_device_argument(parser, "the device of a GPU run (a dry run is on the CPU)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"wall time for all steps; a step that no longer fits is skipped (default: "
                             f"{DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--max-step-s", type=float, help="cap every step's timeout at this")
    parser.add_argument("--fail-step", help=argparse.SUPPRESS)  # tests: this step raises at its start
    parser.add_argument("--hang-step", help=argparse.SUPPRESS)  # tests: this step never returns
    parser.add_argument("--worker", choices=STEP_NAMES, help=argparse.SUPPRESS)  # the driver's per-step process
    parser.add_argument("--rows-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        run_worker(args.worker, dry_run=args.dry_run, device=args.device, rows_file=args.rows_file,
                   fail=args.fail_step == args.worker, hang=args.hang_step == args.worker)
        return 0
    if args.out is not None and os.path.lexists(args.out) and not args.force:
        parser.error(f"{args.out} exists; pass --force to overwrite it")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="nas-gpu-check-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def write(rows: list[Row], complete: bool = False) -> None:
        if args.out is not None:
            from search_spaces.files import write_file

            write_file(args.out, markdown(rows, dry_run=args.dry_run, wall_s=time.monotonic() - start,
                                          complete=complete))

    rows = run_checks(args.steps, dry_run=args.dry_run, device=args.device, log_dir=log_dir,
                      budget_s=args.budget_s, max_step_s=args.max_step_s, fail_step=args.fail_step,
                      hang_step=args.hang_step, on_step=write)
    write(rows, complete=True)
    print()
    print(markdown(rows, dry_run=args.dry_run, wall_s=time.monotonic() - start), end="")
    print(f"\nlogs: {log_dir}" + (f"; table: {args.out}" if args.out is not None else ""))
    return 1 if any(row.status == FAIL for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
