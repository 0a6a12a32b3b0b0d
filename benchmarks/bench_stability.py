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
(:class:`nas.timing.DeviceLock`): here the co-tenant is the point. The defaults are the campaign's
(``TimingConfig``: windows of at least 0.25 s, at least 12 pairs, then until the 95% interval is within ±2% or
30 s pass; 8 specs, 32px, batch 32); ``--precision 0 --pairs 7`` is the fixed budget before issue 27, about 2-3
minutes on the 2-core development machine (AMD EPYC, 2 vCPUs).

``--fresh-processes`` (issue 27) asks whether S/S0 holds across processes and co-tenants, as a campaign needs:
it times each ``--pair`` (default efficientnetv2-b0 against efficientnet-b0, near-equal cost, at 64px, batch 8)
in ``--runs`` fresh processes (default 10) per condition: quiet or beside a co-tenant (a busy loop pinned to one
core), at each of ``--thread-counts`` (torch's default and 1), with the fixed budget campaigns had before issue
27 (``--repeats`` pairs) and with the sequential measurement (:func:`nas.timing.paired_ratio`: pairs until the
95% interval is ``--precision`` narrow or ``--max-timing-s`` pass). The rounds interleave every condition. The
table gives each condition's median S/S0, its coefficient of variation (CV) over processes, the measurements'
own median interval, the per-process share of the spread the intervals do not explain, pairs used and left out
under contention, imprecise measurements, and the seconds per measurement and per process; then how far the
co-tenant moved each median. Targets at the default thread count: CV <= 2% quiet, a move <= 3%.

    python benchmarks/bench_stability.py                       # CPU, tiny space, 32px, batch 32, quiet vs loaded
    python benchmarks/bench_stability.py --pairs 3 --specs 4   # a quick look
    python benchmarks/bench_stability.py --fresh-processes     # 80 processes, about 25 minutes here
    python benchmarks/bench_stability.py --fresh-processes --runs 3 --thread-counts 1   # a quick look

``--device`` defaults to ``auto`` (the GPU when there is one). ``--json`` prints the result as one JSON object on
stdout, the tables going to stderr (``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
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
    markdown_table,
    print_json,
    spearman,
)
from nas.measure import benchmark_spec, describe_device, resolve_device  # noqa: E402
from nas.recipe import TimingConfig  # noqa: E402
from nas.records import relative_half_width  # noqa: E402
from nas.timing import time_relative  # noqa: E402
from search_spaces import presets  # noqa: E402
from search_spaces.spec import ArchSpec  # noqa: E402

# Targets of issue 16 for the paired ratio between the quiet and the loaded pass.
MAX_MEDIAN_CHANGE = 0.03
MIN_SPEARMAN = 0.95
DEFAULT_PAIR = "efficientnetv2-b0:efficientnet-b0"
NUM_CLASSES = 10
IN_CHANNELS = 3


#: Run in a fresh process: one S/S0 measurement exactly as ``nas bench --relative-to`` and a campaign's trial take
#: it (:func:`nas.timing.relative_step_time`), printed as JSON with the process's own wall time.
MEASURE_IN_FRESH_PROCESS = """
import json, sys, time
start = time.perf_counter()
import torch
from nas.measure import describe_device, resolve_device
from nas.recipe import TimingConfig
from nas.timing import relative_step_time
from search_spaces import presets
options = json.loads(sys.argv[1])
if options["threads"] is not None:
    torch.set_num_threads(options["threads"])
device = resolve_device(options["device"])
relative = relative_step_time(presets.resolve_spec(options["spec"]), presets.resolve_spec(options["reference"]),
                              TimingConfig(**options["settings"]), device=device, num_classes=10, in_channels=3)
print(json.dumps({**relative.measurement(), "threads": torch.get_num_threads(), "device": describe_device(device),
                  "process_s": time.perf_counter() - start}))
"""
#: Targets of issue 27 at torch's default thread count, ten fresh processes on a pair of near-equal cost.
MAX_FRESH_CV = 0.02  # S/S0's coefficient of variation over fresh processes, quiet
MAX_CO_TENANT_MOVE = 0.03  # how far a co-tenant pinned to one core may move the median


def method_settings(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """The TimingConfig of a method: ``before`` is the fixed budget campaigns had before issue 27 (``--repeats``
    pairs of 0.25 s windows, rounded up to whole quads; no rebuild, nothing left out under contention), ``after``
    the sequential measurement with its defaults (at least 12 pairs, until the 95% interval's half-width is at most
    ``--precision`` of S/S0 or ``--max-timing-s`` have passed; networks rebuilt every 8 pairs; contended pairs
    left out)."""
    common = {"image_size": args.image_size, "batch_size": args.batch_size}
    if method == "before":
        return {**common, "pairs": args.repeats, "window_s": 0.25, "precision": None, "rebuild_every": 1000,
                "max_stall": None}
    return {**common, "precision": args.precision, "max_seconds": args.max_timing_s}


def measure_in_fresh_process(spec: str, reference: str, settings: dict[str, Any], threads: int | None,
                             device: str) -> dict[str, Any]:
    """One S/S0 measurement in a new Python process (torch imported afresh, new allocations, new thread pool)."""
    options = {"spec": spec, "reference": reference, "settings": settings, "threads": threads, "device": device}
    result = subprocess.run([sys.executable, "-c", MEASURE_IN_FRESH_PROCESS, json.dumps(options)], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the measurement process failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def coefficient_of_variation(values: list[float]) -> float:
    """Standard deviation over mean (sample standard deviation; 0 for one value)."""
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def per_process_share(cv: float, half_widths: list[float]) -> float | None:
    """The part of the spread between processes that the measurements' own intervals do not explain: the
    coefficient of variation less the typical within-process standard error (its 95% half-width / 1.96), in
    quadrature; 0 when the intervals explain it all, None without intervals.

    Example: CV 3.0% between processes, half-widths around 2.0% (a standard error of 1.02%): sqrt(3.0² - 1.02²) =
    2.8%, a per-process component no longer measurement within one process can remove.
    """
    if not half_widths:
        return None
    within = statistics.median(half_widths) / 1.96
    return math.sqrt(max(0.0, cv**2 - within**2))


def condition_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fresh-process runs of one condition: S/S0's median, CV and range, the within-process half-width, the
    per-process share, seconds per measurement, and how many were imprecise or left pairs out."""
    ratios = [run["step_time_ratio"] for run in runs]
    half_widths = [relative_half_width(run["step_time_ratio"], (run["step_time_ratio_low"], run["step_time_ratio_high"]))
                   for run in runs if run["step_time_ratio_low"] is not None]
    cv = coefficient_of_variation(ratios)
    return {"runs": len(runs), "median": statistics.median(ratios), "cv": cv, "low": min(ratios),
            "high": max(ratios), "half_width": statistics.median(half_widths) if half_widths else None,
            "per_process": per_process_share(cv, half_widths),
            "seconds": statistics.median(run["step_time_measure_s"] for run in runs),
            "process_s": statistics.median(run["process_s"] for run in runs),
            "pairs": statistics.median(run["step_time_pairs"] for run in runs),
            "discarded": sum(run["step_time_discarded_pairs"] for run in runs),
            "imprecise": sum(run["step_time_stopped_by"] in ("cap", "contention") for run in runs)}


def fresh_processes(args: argparse.Namespace) -> dict[str, Any]:
    """Issue 27: S/S0 of each ``--pair`` measured in ``--runs`` fresh processes, quiet and beside a co-tenant
    pinned to one core, at each ``--thread-counts``, the fixed budget before issue 27 against the sequential
    measurement; the runs of all conditions interleaved, so that a drift of the machine spreads over all of them."""
    wall_start = time.perf_counter()
    thread_counts = [None if value == "default" else int(value) for value in args.thread_counts.split(",")]
    conditions = [(pair, threads, load, method) for pair in args.pair for threads in thread_counts
                  for load in ("quiet", "co-tenant") for method in ("before", "after")]
    print(f"{os.cpu_count()} logical CPUs; load average {os.getloadavg()[0]:.2f} (1 min) at the start; device "
          f"{args.device}; {args.image_size}px, batch {args.batch_size}; {args.runs} fresh processes per condition")
    runs: dict[tuple, list[dict[str, Any]]] = {condition: [] for condition in conditions}
    hog_cores = ""
    for index in range(args.runs):
        for condition in conditions:
            pair, threads, load, method = condition
            spec, reference = pair.split(":")
            with CpuHogs(1 if load == "co-tenant" else 0) as hogs:
                hogs.start()
                hog_cores = hogs.describe() if load == "co-tenant" else hog_cores
                runs[condition].append(measure_in_fresh_process(spec, reference, method_settings(method, args),
                                                                threads, args.device))
        print(f"  round {index + 1}/{args.runs} done ({time.perf_counter() - wall_start:.0f} s)", flush=True)
    device = next(iter(runs.values()))[0]["device"]
    rows, summaries = [], []
    for condition in conditions:
        pair, threads, load, method = condition
        summary = condition_summary(runs[condition])
        threads_used = runs[condition][0]["threads"]
        summaries.append({"pair": pair, "threads": "default" if threads is None else threads,
                          "threads_used": threads_used, "load": load, "method": method, **summary,
                          "ratios": [run["step_time_ratio"] for run in runs[condition]]})
        rows.append([pair, f"{threads_used}" + (" (default)" if threads is None else ""), load, method,
                     f"{summary['median']:.3f}", f"{summary['cv']:.1%}", f"{summary['low']:.3f}-{summary['high']:.3f}",
                     "-" if summary["half_width"] is None else f"±{summary['half_width']:.1%}",
                     "-" if summary["per_process"] is None else f"{summary['per_process']:.1%}",
                     f"{summary['pairs']:.0f}", f"{summary['discarded']}", f"{summary['imprecise']}",
                     f"{summary['seconds']:.1f}", f"{summary['process_s']:.1f}"])
    print(f"\ndevice: {device}; co-tenant: {hog_cores}")
    print(markdown_table(["pair", "threads", "load", "method", "median S/S0", "CV", "range", "interval (median)",
                          "per-process", "pairs (median)", "pairs left out", "imprecise", "s per measurement",
                          "s per process"], rows))
    moves = co_tenant_moves(summaries)
    for move in moves:
        print(f"{move['pair']}, {move['threads']} thread(s), {move['method']}: the co-tenant moved the median "
              f"{move['move']:+.1%}")
    verdicts = targets(summaries, moves)
    print(verdicts["text"])
    wall_s = time.perf_counter() - wall_start
    print(f"wall time: {wall_s:.0f} s; load average {os.getloadavg()[0]:.2f} (1 min) at the end")
    return {"mode": "fresh-processes", "device": device, "image_size": args.image_size,
            "batch_size": args.batch_size, "runs": args.runs, "conditions": summaries, "moves": moves,
            "targets_met": verdicts["met"], "wall_s": wall_s}


def co_tenant_moves(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pair, thread count and method: the co-tenant's median over the quiet median, less 1."""
    quiet = {(row["pair"], row["threads"], row["method"]): row for row in summaries if row["load"] == "quiet"}
    return [{"pair": row["pair"], "threads": row["threads"], "method": row["method"],
             "move": row["median"] / quiet[row["pair"], row["threads"], row["method"]]["median"] - 1}
            for row in summaries if row["load"] == "co-tenant"]


def targets(summaries: list[dict[str, Any]], moves: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 27's targets for the sequential measurement at torch's default threads: CV at most 2% quiet, and a
    co-tenant moving the median at most 3%."""
    cvs = [row["cv"] for row in summaries
           if row["method"] == "after" and row["threads"] == "default" and row["load"] == "quiet"]
    shifts = [abs(move["move"]) for move in moves if move["method"] == "after" and move["threads"] == "default"]
    if not cvs or not shifts:
        return {"met": None, "text": "targets: need the default thread count in --thread-counts"}
    met = max(cvs) <= MAX_FRESH_CV and max(shifts) <= MAX_CO_TENANT_MOVE
    return {"met": met, "text": f"targets at the default thread count (after): CV <= {MAX_FRESH_CV:.0%} quiet "
                                f"(worst {max(cvs):.1%}), co-tenant move <= {MAX_CO_TENANT_MOVE:.0%} (worst "
                                f"{max(shifts):.1%}): {'met' if met else 'NOT met'}"}


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
    settings = TimingConfig(window_s=args.window_s, pairs=args.pairs, precision=args.precision or None,
                            max_seconds=args.max_timing_s).resolved(image_size=args.image_size,
                                                                    batch_size=args.batch_size)

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
                        help="S/S0 of spec pairs in fresh processes, quiet and beside a co-tenant (issue 27)")
    add_device_argument(parser)
    add_json_argument(parser)
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--image-size", type=int, help="default 32 (64 with --fresh-processes)")
    parser.add_argument("--batch-size", type=int, help="default 32 (8 with --fresh-processes)")
    parser.add_argument("--pairs", type=int, default=TimingConfig.pairs,
                        help="pairs of windows per paired ratio (at least), and windows per unpaired S "
                             "(default %(default)s)")
    parser.add_argument("--window-s", type=float, default=TimingConfig.window_s,
                        help="minimum seconds per timed window (default %(default)s)")
    parser.add_argument("--precision", type=float, default=TimingConfig.precision, metavar="SHARE",
                        help="time pairs until S/S0's 95%% interval's half-width is this share of it; 0: exactly "
                             "--pairs (default %(default)s)")
    parser.add_argument("--max-timing-s", type=float, default=TimingConfig.max_seconds,
                        help="the cap of one S/S0 measurement (default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default 1)")
    parser.add_argument("--specs", type=int, default=8, help="specs to time (default %(default)s)")
    parser.add_argument("--hogs", type=int, default=1,
                        help="CPU-bound processes started halfway through the loaded pass (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pair", action="append", metavar="SPEC:REFERENCE",
                        help="--fresh-processes: a spec pair (presets or files), repeatable (default "
                             f"{DEFAULT_PAIR}, near-equal cost)")
    parser.add_argument("--thread-counts", default="default,1",
                        help="--fresh-processes: torch thread counts, 'default' for torch's (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="--fresh-processes: the pairs of the fixed budget before issue 27 (default %(default)s)")
    parser.add_argument("--runs", type=int, default=10,
                        help="--fresh-processes: fresh processes per condition (default %(default)s)")
    args = parser.parse_args()
    with human_output(args.json):
        if args.fresh_processes:
            args.image_size = 64 if args.image_size is None else args.image_size
            args.batch_size = 8 if args.batch_size is None else args.batch_size
            args.pair = args.pair or [DEFAULT_PAIR]
            result = fresh_processes(args)
        else:
            args.image_size = 32 if args.image_size is None else args.image_size
            args.batch_size = 32 if args.batch_size is None else args.batch_size
            args.threads = 1 if args.threads is None else args.threads
            result = quiet_vs_loaded(args)
    if args.json:
        print_json(result)


if __name__ == "__main__":
    main()
