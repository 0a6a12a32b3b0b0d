"""The paired step-time ratio (drift and co-tenants cancel, unlike separate measurements) and the per-device lock
(timing windows of two processes never overlap, trainings do)."""

import dataclasses
import fcntl
import json
import math
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
import torch

import nas.timing
from nas.recipe import TimingConfig
from nas.timing import (
    DeviceLock,
    PairedTiming,
    RelativeStepTime,
    default_lock_directory,
    lock_key,
    paired_ratio,
    relative_step_time,
    time_relative,
)
from search_spaces import presets

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]
TRUE_RATIO = 0.8  # the candidate's step costs 0.8 of the reference's
CANDIDATE_COST_S, REFERENCE_COST_S = 2**-7, 2**-7 / TRUE_RATIO  # 7.8 ms and 9.8 ms, exact binary fractions


class FakeClock:
    """A clock that only steps advance: a step costs its network's seconds times ``slowdown(now)`` (drift, a
    co-tenant). ``timer`` is the window timer :func:`paired_ratio` takes; ``calls`` records (network, steps) and
    ``spans`` (start, end) of each timed window in order."""

    def __init__(self, slowdown: Callable[[float], float] = lambda now: 1.0) -> None:
        self.now = 0.0
        self.slowdown = slowdown
        self.calls: list[tuple[str, int]] = []
        self.spans: list[tuple[float, float]] = []
        self.steps_run = {"candidate": 0, "reference": 0}
        self.candidate = self.network("candidate", CANDIDATE_COST_S)
        self.reference = self.network("reference", REFERENCE_COST_S)
        self.names = {self.candidate: "candidate", self.reference: "reference"}

    def network(self, name: str, cost_s: float) -> Callable[[], None]:
        def step() -> None:
            self.now += cost_s * self.slowdown(self.now)
            self.steps_run[name] += 1

        return step

    def timer(self, step: Callable[[], None], device: torch.device, steps: int) -> float:
        self.calls.append((self.names[step], steps))
        start = self.now
        for _ in range(steps):
            step()
        self.spans.append((start, self.now))
        return self.now - start


def paired(clock: FakeClock, **options) -> PairedTiming:
    options = {"pressure": lambda: None, **options}
    return paired_ratio(lambda: (clock.candidate, clock.reference), CPU, timer=clock.timer, clock=lambda: clock.now,
                        **options)


def unpaired(clock: FakeClock, steps_per_window: tuple[int, int], pairs: int = 7) -> float:
    """The naive estimate: all candidate windows, then all reference windows, ratio of the two medians."""
    medians = []
    for step, steps in zip((clock.candidate, clock.reference), steps_per_window):
        for _ in range(5):
            step()  # the same warm-up
        medians.append(statistics.median(clock.timer(step, CPU, steps) / steps for _ in range(pairs)))
    return medians[0] / medians[1]


def relative_error(ratio: float) -> float:
    return abs(ratio / TRUE_RATIO - 1)


def run_length_s() -> float:
    """How long a paired run lasts on the fake clock with nothing disturbing it."""
    clock = FakeClock()
    paired(clock)
    return clock.now


def test_a_constant_ratio_is_recovered_exactly():
    timing = paired(FakeClock())
    assert timing.ratio == pytest.approx(TRUE_RATIO, rel=1e-12)
    assert timing.ratios == pytest.approx([TRUE_RATIO] * 12, rel=1e-12)
    assert timing.ratio_iqr == pytest.approx(0, abs=1e-12)
    assert (timing.ratio_low, timing.ratio_high) == pytest.approx((TRUE_RATIO, TRUE_RATIO), rel=1e-12)
    assert timing.half_width == pytest.approx(0, abs=1e-12)
    assert timing.step_time_s == pytest.approx(CANDIDATE_COST_S)
    assert timing.reference_step_time_s == pytest.approx(REFERENCE_COST_S)
    # Windows last about min_window_s: 0.25 s / 7.8 ms and ceil(0.25 s / 9.8 ms) steps.
    assert (timing.pairs, timing.steps_per_window, timing.warmup_steps) == (12, (32, 26), 5)
    assert (timing.blocks, timing.discarded_pairs, timing.contention_seen, timing.stopped_by) == (2, 0, False, "pairs")
    assert timing.seconds == pytest.approx(5 * (CANDIDATE_COST_S + REFERENCE_COST_S) * 2 + 12 * 0.5, rel=0.05)
    assert json.loads(json.dumps(timing.to_dict())) == {
        "ratio": timing.ratio, "ratio_low": timing.ratio_low, "ratio_high": timing.ratio_high,
        "ratio_iqr": timing.ratio_iqr, "ratios": list(timing.ratios),
        "step_time_s": timing.step_time_s, "reference_step_time_s": timing.reference_step_time_s, "pairs": 12,
        "steps_per_window": [32, 26], "warmup_steps": 5, "blocks": 2, "discarded_pairs": 0,
        "contention_seen": False, "seconds": timing.seconds, "stopped_by": "pairs",
    }


def test_a_linear_drift_cancels_between_the_two_orders():
    growth = run_length_s() / (2 * math.log(1.5))  # dt/dwork = 1 + t / (2 growth): +50% at the end of the run
    clock = FakeClock(lambda now: 1 + 0.5 * now / growth)
    timing = paired(clock)
    assert clock.slowdown(clock.now) > 1.45  # the device really was ~50% slower at the end than at the start
    assert relative_error(timing.ratio) < 0.01
    # One pair alone does not cancel the drift: the window timed second is slowed, so A B pairs err one way and
    # B A pairs the other. Either order alone keeps that error; each quad's two orders together do not.
    assert relative_error(statistics.median(timing.ratios[0::2])) > 0.01
    assert relative_error(statistics.median(timing.ratios[1::2])) > 0.01
    assert max(timing.ratios[0::2]) < TRUE_RATIO < min(timing.ratios[1::2])
    # Measuring the two networks one after the other is off by much more.
    naive = unpaired(FakeClock(clock.slowdown), timing.steps_per_window)
    assert relative_error(naive) > 0.1 > 10 * relative_error(timing.ratio)


@pytest.mark.parametrize("start_s, length_s", [(0.5, 2.0), (0.7, 2.4), (1.0, 3.0), (1.2, 2.2), (2.0, 2.0)])
def test_a_co_tenant_burst_slows_both_and_cancels(start_s, length_s):
    """A co-tenant doubles every step's time for a stretch that covers several windows."""
    clock = FakeClock(lambda now: 2.0 if start_s <= now < start_s + length_s else 1.0)
    timing = paired(clock)
    assert sum(start_s <= start and end <= start_s + length_s for start, end in clock.spans) >= 3
    # A pair that straddles an edge of the burst is far off (one window slowed, the other not); the medians skip it.
    assert max(relative_error(ratio) for ratio in timing.ratios) > 0.1
    assert relative_error(timing.ratio) < 0.02


def test_separate_measurements_are_fooled_by_a_co_tenant_that_pairing_shrugs_off():
    def slowdown(now: float) -> float:
        return 2.0 if 0.5 <= now < 2.5 else 1.0
    timing = paired(FakeClock(slowdown))
    naive = unpaired(FakeClock(slowdown), timing.steps_per_window)
    assert relative_error(naive) > 0.25  # most candidate windows ran in the burst, no reference window did
    assert relative_error(timing.ratio) < 0.02


def test_windows_alternate_in_abba_order_after_each_warm_up():
    clock = FakeClock()
    timing = paired(clock, warmup=3, pairs=4, max_steps_per_window=10)
    assert clock.calls == [
        ("candidate", 1), ("reference", 1),  # the last warm-up step of each, timed alone to size its windows
        ("candidate", 10), ("reference", 10), ("reference", 10), ("candidate", 10),
        ("candidate", 10), ("reference", 10), ("reference", 10), ("candidate", 10),
    ]
    assert clock.steps_run == {"candidate": 3 + 4 * 10, "reference": 3 + 4 * 10}
    assert timing.steps_per_window == (10, 10) and timing.warmup_steps == 3 and len(timing.ratios) == 4


def test_one_pair_asked_for_is_one_quad_without_an_interval():
    timing = paired(FakeClock(lambda now: 1 + now), pairs=1)
    assert timing.pairs == 2 and len(timing.ratios) == 2
    assert timing.ratio == pytest.approx(math.sqrt(timing.ratios[0] * timing.ratios[1]))
    assert timing.ratio_low is None and timing.ratio_high is None and timing.half_width is None


# --- the interval, the stopping rule, contention --------------------------------------------------------------------

@pytest.mark.parametrize("n, ranks", [(5, None), (6, (1, 6)), (9, (2, 8)), (10, (2, 9)), (20, (6, 15)),
                                      (100, (40, 61))])
def test_the_median_interval_is_the_order_statistics_of_the_binomial_table(n, ranks):
    """The textbook table of distribution-free 95% intervals for a median (ranks from the smallest)."""
    values = [float(value) for value in range(1, n + 1)]
    shuffled = values[1::2] + values[0::2]  # order does not matter
    interval = nas.timing.median_interval(shuffled)
    assert interval == (None if ranks is None else (values[ranks[0] - 1], values[ranks[1] - 1]))


def test_the_median_interval_is_wider_at_a_higher_confidence():
    values = [1.0 + 0.01 * k for k in range(30)]
    # n = 30: P(B <= 10) = 0.049 and P(B <= 11) = 0.100, so 80% takes ranks 11 and 20; P(B <= 7) = 0.0026 and
    # P(B <= 8) = 0.0081, so 99% takes ranks 8 and 23.
    assert nas.timing.median_interval(values, 0.8) == pytest.approx((1.10, 1.19))
    assert nas.timing.median_interval(values, 0.99) == pytest.approx((1.07, 1.22))
    with pytest.raises(ValueError, match=r"confidence must be a number in \(0.0, 1.0\), got 1"):
        nas.timing.median_interval(values, 1)


@pytest.mark.parametrize("quads, half_width, elapsed, precision, expected", [
    (5, 0.001, 1.0, 0.02, None),  # fewer quads than the minimum: go on, however tight
    (6, 0.001, 1.0, 0.02, "precision"),
    (8, 0.031, 12.0, 0.02, None),
    (8, 0.031, 31.0, 0.02, "cap"),
    (2, None, 31.0, 0.02, "cap"),
    (6, None, 1.0, None, "pairs"),  # a fixed budget
    (5, None, 12.0, None, None),
    (5, None, 31.0, None, "cap"),  # a fixed budget short of clean quads (contention) ends at the cap too
])
def test_the_stopping_rule(quads, half_width, elapsed, precision, expected):
    assert nas.timing.stop_reason(quads, half_width, elapsed, min_quads=6, precision=precision,
                                  max_seconds=30.0) == expected


class NoisyClock(FakeClock):
    """Every step costs its network's seconds times a seeded random factor in [1 - noise, 1 + noise]."""

    def __init__(self, noise: float, seed: int = 0) -> None:
        generator = random.Random(seed)
        super().__init__(lambda now: 1 + noise * (2 * generator.random() - 1))


def test_tight_pairs_stop_at_the_minimum():
    timing = paired(FakeClock(), precision=0.02, max_seconds=60)
    assert (timing.stopped_by, timing.pairs, timing.precise) == ("precision", 12, True)


def test_noisy_pairs_go_on_until_the_interval_is_narrow_enough():
    timing = paired(NoisyClock(0.3), precision=0.02, max_seconds=600, min_window_s=0.02)
    assert timing.stopped_by == "precision" and timing.precise
    assert timing.pairs > 12 and timing.half_width <= 0.02
    assert timing.ratio_low <= TRUE_RATIO <= timing.ratio_high
    assert relative_error(timing.ratio) < 0.02


def test_pairs_too_noisy_for_the_cap_stop_there_and_say_so():
    clock = NoisyClock(0.9)
    timing = paired(clock, precision=0.001, max_seconds=10, min_window_s=0.02)
    assert timing.stopped_by == "cap" and not timing.precise
    assert timing.half_width > 0.001
    assert 10 <= timing.seconds < 11 and clock.now == pytest.approx(timing.seconds)


def test_the_networks_are_built_again_every_block_of_pairs():
    clock, builds = FakeClock(), []

    def build():
        builds.append(clock.now)
        return clock.candidate, clock.reference

    timing = paired_ratio(build, CPU, pairs=20, rebuild_every=6, warmup=3, timer=clock.timer,
                          clock=lambda: clock.now, pressure=lambda: None)
    assert timing.pairs == 20 and timing.blocks == len(builds) == 4  # 10 quads, 3 per build: 3 + 3 + 3 + 1
    # Every build after the first warms both up again, untimed (the window sizes stay the first build's); each
    # quad times the candidate twice.
    assert clock.steps_run["candidate"] == 4 * 3 + 20 * timing.steps_per_window[0]


class CoTenant:
    """A co-tenant from ``start`` to ``end`` on the fake clock: it makes every step take ``slowdown`` times as long
    (as a process sharing the CPU does) and CPU pressure grow at ``stall`` seconds per second meanwhile."""

    def __init__(self, start: float, end: float, *, slowdown: float = 1.5, stall: float = 0.5) -> None:
        self.start, self.end, self.factor, self.stall = start, end, slowdown, stall
        self.clock = FakeClock(self.slowdown)

    def slowdown(self, now: float) -> float:
        return self.factor if self.start <= now < self.end else 1.0

    def pressure(self) -> float:
        overlap = max(0.0, min(self.clock.now, self.end) - self.start)
        return self.stall * overlap


def test_pairs_timed_under_contention_are_left_out_and_counted():
    tenant = CoTenant(2.0, 5.0)
    timing = paired(tenant.clock, pressure=tenant.pressure)
    contended = [(start, end) for start, end in tenant.clock.spans if start < tenant.end and end > tenant.start]
    assert len(contended) >= 8 and timing.contention_seen
    # The quads inside the burst are left out; one that only grazed it (a stall under max_stall of its time) stays,
    # slowed in part, and the median keeps it out of the estimate.
    assert timing.discarded_pairs >= 4 and timing.pairs == 12  # the minimum, of clean pairs
    assert sum(ratio == pytest.approx(TRUE_RATIO, rel=1e-9) for ratio in timing.ratios) >= 10
    assert timing.ratio == pytest.approx(TRUE_RATIO, rel=1e-9)


def test_contention_to_the_cap_gives_the_contended_ratio_and_says_so():
    tenant = CoTenant(0.0, math.inf, slowdown=1.0)
    timing = paired(tenant.clock, pressure=tenant.pressure, precision=0.02, max_seconds=8)
    assert timing.stopped_by == "contention" and not timing.precise
    assert timing.discarded_pairs == 0 and timing.pairs >= 12 and 8 <= timing.seconds < 9
    assert timing.ratio == pytest.approx(TRUE_RATIO)


def test_a_fixed_budget_under_contention_ends_at_the_cap():
    tenant = CoTenant(0.0, math.inf, slowdown=1.0)
    timing = paired(tenant.clock, pressure=tenant.pressure, precision=None, max_seconds=8)
    assert timing.stopped_by == "contention" and 8 <= timing.seconds < 9 and timing.pairs > 12


def test_a_system_without_pressure_information_leaves_nothing_out():
    tenant = CoTenant(0.0, math.inf)
    timing = paired(tenant.clock)  # pressure() None, as on macOS
    assert timing.contention_seen is False and timing.discarded_pairs == 0 and timing.pairs == 12


def test_cpu_pressure_is_read_from_the_kernels_some_line(tmp_path):
    psi = tmp_path / "cpu"
    psi.write_text("some avg10=0.27 avg60=1.05 avg300=0.37 total=1919138406\n"
                   "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert nas.timing.cpu_pressure_s(psi) == pytest.approx(1919.138406)
    assert nas.timing.cpu_pressure_s(tmp_path / "missing") is None
    for nonsense in ("nonsense\n", "some avg10=0.27 total=12ab\n"):
        psi.write_text(nonsense)
        assert nas.timing.cpu_pressure_s(psi) is None


@pytest.mark.parametrize("option, value, message", [
    ("warmup", 0, r"warmup must be an integer in \[1, 1000\], got 0"),
    ("warmup", True, r"warmup must be an integer in \[1, 1000\], got True"),
    ("pairs", 0, r"pairs must be an integer in \[1, 1000\], got 0"),
    ("pairs", 1001, r"pairs must be an integer in \[1, 1000\], got 1001"),
    ("min_window_s", 0, r"min_window_s must be a finite number > 0.0, got 0"),
    ("min_window_s", math.nan, r"min_window_s must be a finite number > 0.0, got nan"),
    ("max_steps_per_window", 0, r"max_steps_per_window must be an integer >= 1, got 0"),
    ("precision", 0, r"precision must be a number in \(0.0, 1.0\] or None, got 0"),
    ("max_seconds", -1, r"max_seconds must be a finite number > 0.0, got -1"),
    ("rebuild_every", 1, r"rebuild_every must be an integer >= 2, got 1"),
    ("max_stall", 0, r"max_stall must be a number in \(0.0, 1.0\] or None, got 0"),
])
def test_arguments_are_checked_before_any_step(option, value, message):
    clock = FakeClock()
    with pytest.raises(ValueError, match=message):
        paired(clock, **{option: value})
    assert clock.steps_run == {"candidate": 0, "reference": 0}


def heavier(spec):
    """``spec`` with its last stage twice as deep and twice as wide."""
    last = spec.stages[-1]
    wider = dataclasses.replace(last, num_layers=2 * last.num_layers, out_channels=2 * last.out_channels)
    return dataclasses.replace(spec, name="tiny-heavier", stages=(*spec.stages[:-1], wider))


SMALL = TimingConfig(image_size=32, batch_size=8, warmup=2, pairs=3, precision=None, max_stall=None)


@pytest.fixture
def one_thread():
    """Times on one CPU thread: on a machine shared with other work (CI, two cores), torch's default thread pool
    waits on descheduled threads and single steps vary tenfold, which no pairing of windows this short evens out."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_time_relative_times_two_real_networks_side_by_side(one_thread):
    tiny = presets.get("tiny")
    timing = time_relative(heavier(tiny), tiny, SMALL, device=CPU, num_classes=10, in_channels=3)
    assert math.isfinite(timing.ratio) and timing.ratio > 1  # the heavier network's step costs more
    assert timing.pairs == 4 and timing.warmup_steps == 2 and len(timing.ratios) == 4  # 3 rounded up to 2 quads
    assert timing.step_time_s > timing.reference_step_time_s > 0
    itself = time_relative(tiny, tiny, dataclasses.replace(SMALL, channels_last=False), device=CPU, num_classes=10,
                           in_channels=3)
    assert 0.8 < itself.ratio < 1.25


def test_time_relative_needs_resolved_settings():
    tiny = presets.get("tiny")
    with pytest.raises(ValueError, match=r"settings must be resolved .*image_size=None, batch_size=8"):
        time_relative(tiny, tiny, TimingConfig(batch_size=8), device=CPU, num_classes=10, in_channels=3)


def _fake_pairs(lock_path: Path, calls: list[str]) -> Callable[..., PairedTiming]:
    """A stand-in for :func:`time_relative` that records the candidate's name and fails unless the device's timing
    lock (at ``lock_path``) is held while it runs."""

    def timed(spec, reference, settings, **options) -> PairedTiming:
        with open(lock_path) as other:  # flock: a second open file conflicts, even in this process
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        calls.append(spec.name)
        return PairedTiming(ratio=1.25, ratio_low=1.2, ratio_high=1.3, ratio_iqr=0.05, ratios=(1.2, 1.3, 1.25, 1.25),
                            step_time_s=0.005, reference_step_time_s=0.004, pairs=4, steps_per_window=(10, 12),
                            warmup_steps=2, seconds=1.5, stopped_by="pairs")

    return timed


def test_relative_step_time_times_inside_the_lock_then_caches_and_reuses(tmp_path, monkeypatch):
    """The one sequence of nas bench --relative-to, a trial and the benchmarks: cache, lock, paired timing, cache."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(nas.timing, "time_relative", _fake_pairs(DeviceLock(CPU).path, calls))
    tiny, storage = presets.get("tiny"), f"sqlite:///{tmp_path / 'cache.db'}"
    options = dict(device=CPU, num_classes=10, in_channels=3)

    alone = relative_step_time(heavier(tiny), tiny, SMALL, **options)
    assert alone == RelativeStepTime(1.25, 1.2, 1.3, 0.05, 0.005, 0.004, 4, 0, 1.5, "pairs", cached=False)
    assert calls == ["tiny-heavier"]
    assert not (tmp_path / "cache.db").exists()  # no storage: nothing written

    timed = relative_step_time(heavier(tiny), tiny, SMALL, **options, storage_url=storage)
    cached = relative_step_time(heavier(tiny), tiny, SMALL, **options, storage_url=storage)
    assert calls == ["tiny-heavier", "tiny-heavier"]  # the second call read the cache
    assert timed.cached is False and cached.cached is True
    assert cached.measurement() == timed.measurement() == {
        "step_time_ratio": 1.25, "step_time_ratio_low": 1.2, "step_time_ratio_high": 1.3, "step_time_ratio_iqr": 0.05,
        "step_time_s": 0.005, "reference_step_time_s": 0.004, "step_time_pairs": 4, "step_time_discarded_pairs": 0,
        "step_time_measure_s": 1.5, "step_time_stopped_by": "pairs"}
    relative_step_time(heavier(tiny), tiny, dataclasses.replace(SMALL, image_size=64), **options,
                       storage_url=storage)
    assert len(calls) == 3  # other settings: another entry, timed


def test_relative_step_time_names_a_storage_it_cannot_open(tmp_path):
    from nas.storage import StudyError

    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database" * 100)
    tiny = presets.get("tiny")
    with pytest.raises(StudyError, match=f"cannot open storage sqlite:///{damaged}"):
        relative_step_time(tiny, tiny, SMALL, device=CPU, num_classes=10, in_channels=3,
                           storage_url=f"sqlite:///{damaged}")


def test_lock_keys_name_the_device(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert lock_key(CPU) == lock_key("cpu") == "cpu"
    assert lock_key(torch.device("cuda:1")) == "cuda1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # a Ray worker's view: its cuda:1 is the node's GPU 5
    assert lock_key("cuda:1") == "cuda5" and lock_key("cuda:0") == "cuda3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert lock_key("mps") == "mps"
    with pytest.raises(ValueError, match=r"device must be cpu, cuda, cuda:N or mps, got 'meta'"):
        lock_key("meta")
    assert DeviceLock(torch.device("cuda", 1), directory="/locks").path == Path("/locks/nas-timing-cuda1.lock")


def test_the_lock_is_exclusive_and_released_after_an_exception(tmp_path):
    lock = DeviceLock(CPU, directory=tmp_path)
    with pytest.raises(RuntimeError, match="inside"):
        with lock:
            assert lock.path == tmp_path / "nas-timing-cpu.lock" and lock.path.is_file()
            assert lock.wait_s is not None and lock.wait_s < 1
            with open(lock.path) as other:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise RuntimeError("inside")
    with open(lock.path) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


def test_a_planted_link_is_refused_not_followed(tmp_path):
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    (tmp_path / "nas-timing-cpu.lock").symlink_to(victim)
    with pytest.raises(PermissionError, match="is a symbolic link; refusing to follow it"):
        with DeviceLock(CPU, directory=tmp_path):
            pass
    assert not victim.exists()
    (tmp_path / "linked").symlink_to(victim.parent)
    with pytest.raises(PermissionError, match="must be a directory of this user"):
        with DeviceLock(CPU, directory=tmp_path / "linked"):
            pass


def test_a_wait_for_the_lock_names_the_lock_and_its_holder(tmp_path):
    """Issue 25: a campaign or nas bench that waits for another process's timing says so, after a few seconds and
    then at a slow interval, naming the lock and the holder's PID."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom nas.timing import DeviceLock\n"
         f"with DeviceLock('cpu', directory={str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert holder.stdout.readline() == "held\n"
    notices = []
    with DeviceLock(CPU, directory=tmp_path, notify=notices.append, notice_after_s=0.2, notice_every_s=0.5) as lock:
        assert lock.wait_s > 0.5
    holder.wait()
    assert 2 <= len(notices) <= 5, notices
    assert all(f"waiting for the timing lock {lock.path} (held by pid {holder.pid} on " in notice for notice in notices)


@pytest.mark.parametrize("plant, words", [("directory at the lock", "is a directory, not a lock file; remove it"),
                                          ("file at the directory", "exists and is not a directory; remove it")])
def test_an_unusable_lock_path_is_said_in_the_project_s_words(tmp_path, plant, words):
    directory = tmp_path / "locks"
    if plant == "file at the directory":
        directory.write_text("not a directory")
    else:
        (directory / "nas-timing-cpu.lock").mkdir(parents=True)
    with pytest.raises(PermissionError, match=f"^timing lock (directory )?{tmp_path}.*{words}"):
        with DeviceLock(CPU, directory=directory):
            pass


def test_the_default_directory_is_private_and_per_user(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with DeviceLock(CPU) as lock:
        assert lock.path.parent == default_lock_directory() == tmp_path / f"nas-timing-locks-{os.getuid()}"
    assert lock.path.parent.stat().st_mode & 0o777 == 0o700


WINDOW_S = 0.2


def hold_windows(directory: str, name: str) -> dict[str, list]:
    """A worker's life: 3 rounds of a "training" stretch outside the lock and a "timing window" inside it.

    Both workers wait for each other first (a barrier of files), so that their first trainings start together.
    Returns each stretch's (start, end) on the machine's wall clock and how long each lock took to acquire.
    """
    Path(directory, f"ready-{name}").touch()
    deadline = time.time() + 120
    while len(list(Path(directory).glob("ready-*"))) < 2:
        if time.time() > deadline:
            raise TimeoutError("the other worker never started")
        time.sleep(0.01)
    stretches: dict[str, list] = {"training": [], "timing": [], "wait_s": []}
    for _ in range(3):
        start = time.time()
        time.sleep(WINDOW_S)
        stretches["training"].append((start, time.time()))
        with DeviceLock(CPU, directory=directory) as lock:
            start = time.time()
            time.sleep(WINDOW_S)
            stretches["timing"].append((start, time.time()))
        stretches["wait_s"].append(lock.wait_s)
    return stretches


def check_two_workers(results: list[dict[str, list]], directory: Path) -> None:
    windows = sorted(window for result in results for window in result["timing"])
    assert len(windows) == 6
    assert all(end <= next_start for (_, end), (next_start, _) in zip(windows, windows[1:])), windows
    first, second = (result["training"] for result in results)
    assert any(max(a[0], b[0]) < min(a[1], b[1]) for a in first for b in second), (first, second)
    assert max(wait for result in results for wait in result["wait_s"]) > WINDOW_S / 2  # someone did wait
    assert (directory / "nas-timing-cpu.lock").is_file()


def test_two_processes_never_time_at_once_but_train_together(tmp_path):
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(hold_windows, str(tmp_path), name) for name in ("a", "b")]
        check_two_workers([future.result(timeout=120) for future in futures], tmp_path)


def test_two_ray_workers_on_one_node_never_time_at_once(tmp_path):
    ray = pytest.importorskip("ray")
    # The workers import this module and the project: both on their path, whatever directory pytest runs in.
    path = os.pathsep.join([str(ROOT), str(Path(__file__).parent)])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        worker = ray.remote(num_cpus=1)(hold_windows)
        results = ray.get([worker.remote(str(tmp_path), name) for name in ("a", "b")], timeout=300)
    finally:
        ray.shutdown()
    check_two_workers(results, tmp_path)
