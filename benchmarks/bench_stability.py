"""How stable is the step time ratio S/S0 that enters the reward, alone and beside a co-tenant?

Default (issue 16): paired against unpaired S/S0, quiet and loaded. ``--specs`` distinct specs sampled from the
space (fixed seed, the space's baseline excluded) are each timed relative to the space's baseline S0 two ways:

- paired (what campaigns do): :func:`nas.timing.time_relative`, both networks resident in one process, S/S0 from
  ``--pairs`` pairs of interleaved windows in ABBA order; one call per spec;
- unpaired (the method before issue 16): S0 measured once at the start of a pass with
  :func:`nas.measure.benchmark_spec`, each spec's S measured later the same way (``--pairs`` windows, so each
  network gets as many timed windows as in a pair); ratio = S / S0.

Each spec is timed both ways, one after the other, in two passes in one process: quiet, then loaded. In the
loaded pass ``--hogs`` CPU-bound processes (default 1: a Python busy loop in a child process, pinned with
``os.sched_setaffinity`` to the last core this process may use, where the platform has it) start after half the
specs and are stopped at the end of the pass. The table gives each spec's ratios in both passes and the change,
and the change of the candidate's own step time (how much the load slowed it); below it, per method, the median
and largest absolute change and the Spearman correlation of the quiet and loaded orderings. Targets for the
paired ratio: median absolute change at most 3%, Spearman at least 0.95.

Torch threads are set explicitly (``--threads``, default 1): with torch's default of 2 threads on a 2-core
machine, a co-tenant that preempts either thread stalls the whole step, and single steps then vary up to 30x; at 1
thread the step runs on whichever core is free. The run does not take the timing lock
(:class:`nas.timing.DeviceLock`): here the co-tenant is the point. The defaults (8 specs, 7 pairs of windows of
at least 0.25 s: the campaign defaults of ``TimingConfig``; 32px, batch 32) take about 2-3 minutes on the 2-core
development machine (AMD EPYC, 2 vCPUs); ``--pairs 15`` about twice that.

``--fresh-processes`` runs the earlier measurements instead (batch 128 unless ``--batch-size``, ``--repeats``
windows each):

1. One spec benchmarked ``--runs`` times, each in a fresh process (``nas bench --json``): median and coefficient of
   variation (standard deviation / mean) of the medians.
2. ``--specs`` different specs (the baseline and samples), each measured twice in fresh processes: Spearman rank
   correlation of the two orderings, i.e. whether the search would rank candidates the same way twice.

    python benchmarks/bench_stability.py                       # CPU, tiny space, 32px, batch 32, quiet vs loaded
    python benchmarks/bench_stability.py --pairs 3 --specs 4   # a quick look
    python benchmarks/bench_stability.py --fresh-processes     # CPU, tiny space, 32px, batch 128
    python benchmarks/bench_stability.py --fresh-processes --device cuda --space efficientnetv2-s --image-size 128

``--device`` defaults to ``auto`` (the GPU when there is one). ``--json`` prints the result as one JSON object on
stdout, the tables going to stderr (``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    add_device_argument,
    add_json_argument,
    human_output,
    print_json,
    spearman,
)
from nas.measure import benchmark_spec, describe_device, resolve_device  # noqa: E402
from nas.recipe import TimingConfig  # noqa: E402
from nas.timing import time_relative  # noqa: E402
from search_spaces import presets  # noqa: E402
from search_spaces.io import dump_spec  # noqa: E402
from search_spaces.spec import ArchSpec  # noqa: E402

# Targets of issue 16 for the paired ratio between the quiet and the loaded pass.
MAX_MEDIAN_CHANGE = 0.03
MIN_SPEARMAN = 0.95
NUM_CLASSES = 10
IN_CHANNELS = 3


def bench_in_fresh_process(spec_path: Path, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, "-m", "nas", "bench", str(spec_path), "--json", "--device", args.device,
        "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--num-classes", "10",
        "--repeats", str(args.repeats),
    ]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def fresh_processes(args: argparse.Namespace) -> dict[str, Any]:
    """The measurements before issue 16: one spec in fresh processes, and the ranks of specs twice; returns them."""
    space = presets.get_space(args.space)
    rng = random.Random(args.seed)
    specs = [space.baseline] + [space.sample(rng) for _ in range(args.specs - 1)]
    with tempfile.TemporaryDirectory() as directory:
        paths = []
        for index, spec in enumerate(specs):
            paths.append(Path(directory) / f"spec{index}.yaml")
            dump_spec(spec, paths[-1])

        same = [bench_in_fresh_process(paths[0], args) for _ in range(args.runs)]
        medians = [run["step"]["median_s"] for run in same]
        device = same[0]["device"]
        print(f"device: {device}")
        print(f"settings: {args.space} space, {args.image_size}px, batch {args.batch_size}, {args.repeats} windows\n")
        print(f"1) the baseline of the {args.space} space, {args.runs} fresh processes")
        table = pd.DataFrame({
            "run": range(1, args.runs + 1),
            "S median (ms)": [m * 1e3 for m in medians],
            "window IQR / median": [run["step"]["relative_spread"] for run in same],
        })
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        mean = statistics.mean(medians)
        cv = statistics.stdev(medians) / mean if len(medians) > 1 else 0.0
        print(f"median of medians: {statistics.median(medians) * 1e3:.3f} ms; coefficient of variation: {cv:.2%}\n")

        first = [bench_in_fresh_process(path, args)["step"]["median_s"] for path in paths]
        second = [bench_in_fresh_process(path, args)["step"]["median_s"] for path in paths]
        rows = pd.DataFrame({
            "spec": [" ".join(spec.block_strings) for spec in specs],
            "S first (ms)": [s * 1e3 for s in first],
            "S second (ms)": [s * 1e3 for s in second],
        })
        rows["difference"] = (rows["S second (ms)"] / rows["S first (ms)"] - 1).map(lambda v: f"{v:+.1%}")
        print(f"2) {args.specs} specs, each measured twice in fresh processes")
        print(rows.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        correlation = spearman(first, second)
        print(f"Spearman rank correlation of the two orderings: {correlation:.3f}")
    return {"mode": "fresh-processes", "device": device, "space": args.space, "image_size": args.image_size,
            "batch_size": args.batch_size, "repeats": args.repeats,
            "runs": [{"median_s": run["step"]["median_s"], "relative_spread": run["step"]["relative_spread"]}
                     for run in same],
            "median_of_medians_s": statistics.median(medians), "coefficient_of_variation": cv,
            "specs": [{"spec": " ".join(spec.block_strings), "first_s": a, "second_s": b}
                      for spec, a, b in zip(specs, first, second)],
            "spearman": correlation}


class CpuHogs:
    """CPU-bound child processes (Python busy loops), each pinned to one core where the platform allows it.

    Plain child processes rather than forks of this one: forking a process whose torch thread pool is running
    is asking for trouble, and a ``spawn`` would import torch again. The first goes on the last core this
    process may use, the next on the one before, and so on.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.processes: list[subprocess.Popen] = []
        self.cores: list[int] = []

    def start(self) -> None:
        cores = sorted(os.sched_getaffinity(0), reverse=True) if hasattr(os, "sched_setaffinity") else []
        for index in range(self.count):
            process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            self.processes.append(process)
            if cores:
                self.cores.append(cores[index % len(cores)])
                os.sched_setaffinity(process.pid, {self.cores[-1]})

    def describe(self) -> str:
        where = f"pinned to core(s) {', '.join(map(str, self.cores))}" if self.cores else "unpinned"
        return f"{len(self.processes)} CPU-bound process(es), {where}"

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait()
        self.processes = []

    def __enter__(self) -> CpuHogs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass
class Pass:
    """One pass over the specs: each spec's paired and unpaired S/S0, and the step times behind them."""

    paired: list[float]
    unpaired: list[float]
    paired_s: list[float]  # the candidate's median seconds per step in its paired windows
    unpaired_s: list[float]
    pair_spread: list[float]  # interquartile range of each spec's per-pair ratios, over its ratio
    reference_s: float  # the unpaired S0, measured at the start of the pass
    seconds: float


def distinct_samples(space, count: int, seed: int) -> list[ArchSpec]:
    """``count`` distinct specs drawn from ``space`` with one seeded generator, the baseline excluded."""
    return space.sample_distinct(count, random.Random(seed))


def run_pass(specs: list[ArchSpec], baseline: ArchSpec, args: argparse.Namespace, device: torch.device, *,
             loaded: bool) -> Pass:
    settings = TimingConfig(window_s=args.window_s, pairs=args.pairs).resolved(
        image_size=args.image_size, batch_size=args.batch_size)

    def unpaired_seconds(spec: ArchSpec) -> float:
        result = benchmark_spec(spec, device=str(device), batch_size=args.batch_size, image_size=args.image_size,
                                in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, warmup=settings.warmup,
                                repeats=args.pairs, min_window_s=args.window_s, threads=args.threads)
        return result.step.median_s

    start = time.perf_counter()
    label = "loaded" if loaded else "quiet"
    with CpuHogs(args.hogs) as hogs:
        reference_s = unpaired_seconds(baseline)
        paired, unpaired, paired_s, unpaired_s, pair_spread = [], [], [], [], []
        for index, spec in enumerate(specs):
            if loaded and index == len(specs) // 2:
                hogs.start()
                print(f"  {label}: started {hogs.describe()}, before spec {index + 1}", flush=True)
            timing = time_relative(spec, baseline, settings, device=device, num_classes=NUM_CLASSES,
                                   in_channels=IN_CHANNELS)
            seconds = unpaired_seconds(spec)
            paired.append(timing.ratio)
            paired_s.append(timing.step_time_s)
            pair_spread.append(timing.ratio_iqr / timing.ratio)
            unpaired.append(seconds / reference_s)
            unpaired_s.append(seconds)
            print(f"  {label} {index + 1}/{len(specs)}: paired {timing.ratio:.3f}, unpaired {seconds / reference_s:.3f}"
                  f" ({time.perf_counter() - start:.0f} s)", flush=True)
    return Pass(paired, unpaired, paired_s, unpaired_s, pair_spread, reference_s, time.perf_counter() - start)


def change_summary(quiet: list[float], loaded: list[float]) -> dict[str, float | bool]:
    """How much the load moved one method's S/S0: the median and largest absolute change, the Spearman correlation
    of the two orderings, and whether the paired ratio's targets hold for these figures."""
    changes = [abs(b / a - 1) for a, b in zip(quiet, loaded)]
    median, largest, rho = statistics.median(changes), max(changes), spearman(quiet, loaded)
    return {"median_change": median, "max_change": largest, "spearman": rho,
            "targets_met": median <= MAX_MEDIAN_CHANGE and rho >= MIN_SPEARMAN}


def summarize(name: str, summary: dict[str, float | bool], *, targets: bool) -> str:
    line = (f"{name}: median |change| {summary['median_change']:.1%}, max |change| {summary['max_change']:.1%}, "
            f"Spearman {summary['spearman']:.3f}")
    if targets:
        verdict = "met" if summary["targets_met"] else "NOT met"
        line += (f"  (targets: median |change| <= {MAX_MEDIAN_CHANGE:.0%}, Spearman >= {MIN_SPEARMAN}: {verdict})")
    return line


def quiet_vs_loaded(args: argparse.Namespace) -> dict[str, Any]:
    """Paired and unpaired S/S0 of ``--specs`` specs, in a quiet pass and in a pass loaded halfway through; returns
    them and their summaries."""
    wall_start = time.perf_counter()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    space = presets.get_space(args.space)
    specs = distinct_samples(space, args.specs, args.seed)
    print(f"device: {describe_device(device)}; {os.cpu_count()} logical CPUs; "
          f"load average {os.getloadavg()[0]:.2f} (1 min) at the start")
    print(f"settings: {args.space} space, {args.specs} specs (seed {args.seed}) against its baseline, "
          f"{args.image_size}px, batch {args.batch_size}, {args.pairs} pairs / windows of {args.window_s} s, "
          f"{args.threads} torch thread(s)\n")
    quiet = run_pass(specs, space.baseline, args, device, loaded=False)
    loaded = run_pass(specs, space.baseline, args, device, loaded=True)

    def change(a: list[float], b: list[float]) -> list[str]:
        return [f"{y / x - 1:+.1%}" for x, y in zip(a, b)]

    half = len(specs) // 2
    table = pd.DataFrame({
        "spec": [" ".join(spec.block_strings) for spec in specs],
        "loaded": ["yes" if index >= half else "" for index in range(len(specs))],
        "paired quiet": quiet.paired,
        "paired loaded": loaded.paired,
        "paired change": change(quiet.paired, loaded.paired),
        "unpaired quiet": quiet.unpaired,
        "unpaired loaded": loaded.unpaired,
        "unpaired change": change(quiet.unpaired, loaded.unpaired),
        "S change": change(quiet.paired_s, loaded.paired_s),
    })
    print("\nS/S0 quiet and loaded (the CPU-bound process ran during the specs marked 'loaded'); 'S change': the"
          " candidate's own step time in its paired windows, loaded over quiet")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"S0 (unpaired, at the start of each pass): quiet {quiet.reference_s * 1e3:.2f} ms, "
          f"loaded pass {loaded.reference_s * 1e3:.2f} ms")
    print("per-pair ratios' IQR / ratio, median over the specs: quiet pass "
          f"{statistics.median(quiet.pair_spread):.1%}, loaded half {statistics.median(loaded.pair_spread[half:]):.1%}")
    paired, unpaired = change_summary(quiet.paired, loaded.paired), change_summary(quiet.unpaired, loaded.unpaired)
    print(summarize("paired", paired, targets=True))
    print(summarize("unpaired", unpaired, targets=False))
    wall_s = time.perf_counter() - wall_start
    print(f"wall time: {wall_s:.0f} s (quiet pass {quiet.seconds:.0f} s, loaded pass "
          f"{loaded.seconds:.0f} s); load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    return {"mode": "quiet-vs-loaded", "device": describe_device(device), "space": args.space,
            "image_size": args.image_size, "batch_size": args.batch_size, "pairs": args.pairs,
            "window_s": args.window_s, "threads": args.threads, "hogs": args.hogs,
            "specs": [{"spec": " ".join(spec.block_strings), "loaded": index >= half,
                       "paired_quiet": quiet.paired[index], "paired_loaded": loaded.paired[index],
                       "unpaired_quiet": quiet.unpaired[index], "unpaired_loaded": loaded.unpaired[index],
                       "step_time_quiet_s": quiet.paired_s[index], "step_time_loaded_s": loaded.paired_s[index]}
                      for index, spec in enumerate(specs)],
            "paired": paired, "unpaired": unpaired, "wall_s": wall_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh-processes", action="store_true",
                        help="run the earlier measurements (one spec in fresh processes; ranks twice) instead")
    add_device_argument(parser)
    add_json_argument(parser)
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, help="default 32 (128 with --fresh-processes)")
    parser.add_argument("--pairs", type=int, default=TimingConfig.pairs,
                        help="pairs of windows per paired ratio, and windows per unpaired S (default %(default)s)")
    parser.add_argument("--window-s", type=float, default=TimingConfig.window_s,
                        help="minimum seconds per timed window (default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default 1; with --fresh-processes, torch's)")
    parser.add_argument("--specs", type=int, default=8, help="specs to time (default %(default)s)")
    parser.add_argument("--hogs", type=int, default=1,
                        help="CPU-bound processes started halfway through the loaded pass (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7, help="--fresh-processes: timed windows per measurement")
    parser.add_argument("--runs", type=int, default=5, help="--fresh-processes: fresh-process runs of one spec")
    args = parser.parse_args()
    with human_output(args.json):
        if args.fresh_processes:
            args.batch_size = 128 if args.batch_size is None else args.batch_size
            result = fresh_processes(args)
        else:
            args.batch_size = 32 if args.batch_size is None else args.batch_size
            args.threads = 1 if args.threads is None else args.threads
            result = quiet_vs_loaded(args)
    if args.json:
        print_json(result)


if __name__ == "__main__":
    main()
