"""Does the rank of architectures by step time S depend on the settings S is timed at?

A search trains candidates at proxy settings (a reduced image size) but the user pays S at the target settings of
the real training. This times two groups of specs at both, each with the one timing protocol
(``nas.measure.benchmark_spec``: warm-up, synchronized windows, median), and prints per group S, S relative to the
group's reference and the rank at each setting, the Spearman and Kendall (tau-b) correlations of the two orderings,
and every pair whose order flips (A faster than B at the proxy settings, slower at the target settings).

- tiny: the backbone of the `tiny` space and 7 distinct samples (space.sample(seed), seeds 1, 2, ...), 32px vs
  128px; reference: the backbone.
- b4: EfficientNet-B4 with Fused-MBConv in no stage, stages 1-3, 1-5 and 1-7 (experiments/fused_placement.py,
  EfficientNetV2 Table 3), 64px vs 128px; reference: no fused.

Defaults: 3 interleaved rounds of 2 timed windows per spec and setting (S is the median of the 6; a load that
comes and goes then falls on every spec alike), batch 32 for tiny and 8 for B4, and 1 torch thread on CPU: on a CPU
shared with other jobs a multi-threaded step stalls on whichever thread a co-tenant preempts; at 2 threads on a busy
2-core machine the windows of one measurement spread up to 5x (ranks were noise), at 1 thread a few percent. They
take about 8 minutes there (the all-fused B4 at 128px is ~4-6 s a step). On a quiet machine pass --threads to time
what a multi-threaded training would pay.

    python benchmarks/bench_timing_settings.py                          # CPU, both groups
    python benchmarks/bench_timing_settings.py --groups b4 --rounds 1 --repeats 3
    python benchmarks/bench_timing_settings.py --threads 2              # all cores of a quiet 2-core CPU
    python benchmarks/bench_timing_settings.py --device cuda --tiny-batch-size 256 --b4-batch-size 64

``--device`` defaults to ``auto`` (the GPU when there is one). ``--json`` prints the result as one JSON object on
stdout, the tables going to stderr (``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    add_device_argument,
    add_json_argument,
    human_output,
    kendall_tau_b,
    print_json,
    spearman,
)
from nas.measure import benchmark_spec, describe_device, prepare_device, resolve_device  # noqa: E402
from search_spaces import presets  # noqa: E402
from search_spaces.spec import ArchSpec  # noqa: E402

TINY_SPECS = 8
TINY_SIZES = (32, 128)  # (proxy, target)
B4_SIZES = (64, 128)


def load_fused_placement():
    """experiments/fused_placement.py as a module (experiments is not a package)."""
    path = ROOT / "experiments" / "fused_placement.py"
    module_spec = importlib.util.spec_from_file_location("fused_placement", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def abbreviate(spec: ArchSpec) -> str:
    """``fused_r2_k3_s1_e1_c24`` -> ``F2k3e1``: the decisions of the tiny space (stride and width are fixed)."""
    return " ".join(
        f"{'F' if stage.op == 'fused_mbconv' else 'M'}{stage.num_layers}k{stage.kernel_size}e{stage.expand_ratio}"
        for stage in spec.stages
    )


def tiny_specs() -> list[tuple[str, ArchSpec]]:
    space = presets.get_space("tiny")
    specs = [(f"baseline {abbreviate(space.baseline)}", space.baseline)]
    seen = {space.baseline.block_strings}
    for seed in itertools.count(1):
        if len(specs) == TINY_SPECS:
            break
        spec = space.sample(seed)
        if spec.block_strings not in seen:  # distinct architectures only
            seen.add(spec.block_strings)
            specs.append((f"seed {seed} {abbreviate(spec)}", spec))
    return specs


def b4_specs() -> list[tuple[str, ArchSpec]]:
    fused_placement = load_fused_placement()
    b4 = fused_placement.efficientnet_b4()
    placements = fused_placement.PLACEMENTS.items()
    return [(label, fused_placement.with_fused_stages(b4, count)) for label, count in placements]


@dataclass
class Group:
    name: str
    specs: list[tuple[str, ArchSpec]]  # the first is the reference
    sizes: tuple[int, int]  # (proxy, target) image sizes
    batch_size: int


def run_group(group: Group, args: argparse.Namespace) -> dict[str, Any]:
    """Times every spec at both settings in interleaved rounds, prints the table and returns it.

    Each round times every (spec, setting) once with the protocol, the order reversed every other round; S is the
    median of all of a (spec, setting)'s windows. Load that comes and goes (co-tenants, thermal drift) then falls on
    every spec alike instead of on whichever happened to be timed at that moment.
    """
    proxy, target = group.sizes
    jobs = [(index, size) for index in range(len(group.specs)) for size in group.sizes]
    windows: dict[tuple[int, int], list[float]] = {job: [] for job in jobs}
    for round_index in range(args.rounds):
        for index, size in jobs if round_index % 2 == 0 else reversed(jobs):
            result = benchmark_spec(
                group.specs[index][1], device=args.device, batch_size=group.batch_size, image_size=size,
                repeats=args.repeats, threads=args.threads,
            )
            windows[index, size].extend(result.step.window_s)

    def median_s(index: int, size: int) -> float:
        return statistics.median(windows[index, size])

    def relative_spread(index: int, size: int) -> float:
        values = windows[index, size]
        if len(values) < 2:
            return 0.0
        quartiles = statistics.quantiles(values, n=4, method="inclusive")  # as nas.measure.time_step
        return (quartiles[2] - quartiles[0]) / statistics.median(values)

    labels = [label for label, _ in group.specs]
    seconds = {size: pd.Series([median_s(index, size) for index in range(len(labels))]) for size in group.sizes}
    table = pd.DataFrame({"spec": labels})
    for size in group.sizes:
        table[f"S {size}px (ms)"] = seconds[size] * 1e3
    for size in group.sizes:
        table[f"S/ref {size}px"] = seconds[size] / seconds[size].iloc[0]
    for size in group.sizes:
        table[f"rank {size}px"] = seconds[size].rank(method="min").astype(int)
    for size in group.sizes:
        table[f"IQR/med {size}px"] = [relative_spread(index, size) for index in range(len(labels))]

    print(f"{group.name}: batch {group.batch_size}, proxy {proxy}px vs target {target}px, "
          f"{args.rounds} rounds x {args.repeats} windows; reference: {labels[0]}; rank 1 = fastest; "
          f"IQR/med = spread of all its windows")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    a, b = table[f"S {proxy}px (ms)"], table[f"S {target}px (ms)"]
    rho, tau = spearman(list(a), list(b)), kendall_tau_b(list(a), list(b))
    print(f"Spearman rank correlation {rho:.3f}, Kendall tau-b {tau:.3f}")

    flips = []
    for i, j in itertools.combinations(range(len(labels)), 2):
        if (a[i] - a[j]) * (b[i] - b[j]) < 0:
            fast, slow = (i, j) if a[i] < a[j] else (j, i)  # fast is faster at the proxy settings
            gaps = (a[slow] / a[fast] - 1, b[fast] / b[slow] - 1)
            spread = max(table[f"IQR/med {size}px"][k] for size in group.sizes for k in (fast, slow))
            noise = " (within the window spread)" if min(gaps) < spread else ""
            flips.append(f"  {labels[fast]} faster than {labels[slow]} at {proxy}px "
                         f"({a[fast]:.1f} vs {a[slow]:.1f} ms), slower at {target}px "
                         f"({b[fast]:.1f} vs {b[slow]:.1f} ms){noise}")
    pairs = len(labels) * (len(labels) - 1) // 2
    print(f"order flips between {proxy}px and {target}px: {len(flips)} of {pairs} pairs")
    print("\n".join(flips) if flips else "  none")
    print()
    return {"name": group.name, "batch_size": group.batch_size, "proxy_image_size": proxy,
            "target_image_size": target, "rounds": args.rounds, "repeats": args.repeats,
            "specs": [{"spec": label, "proxy_step_time_s": a[index] / 1e3, "target_step_time_s": b[index] / 1e3}
                      for index, label in enumerate(labels)],
            "spearman": rho, "kendall_tau_b": tau, "order_flips": len(flips), "pairs": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_argument(parser)
    add_json_argument(parser)
    parser.add_argument("--groups", choices=("tiny", "b4", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=2, help="timed windows per spec, setting and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all specs and settings")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on CPU, see above)")
    parser.add_argument("--tiny-batch-size", type=int, default=32)
    parser.add_argument("--b4-batch-size", type=int, default=8)
    args = parser.parse_args()
    groups = []
    if args.groups in ("tiny", "both"):
        groups.append(Group("tiny space", tiny_specs(), TINY_SIZES, args.tiny_batch_size))
    if args.groups in ("b4", "both"):
        groups.append(Group("EfficientNet-B4, Fused-MBConv placement", b4_specs(), B4_SIZES, args.b4_batch_size))

    start = time.perf_counter()
    torch_device = resolve_device(args.device)
    if args.threads is None and torch_device.type == "cpu":
        args.threads = 1
    prepare_device(torch_device, args.threads)
    device = describe_device(torch_device)  # the description every benchmark result carries
    software = "" if f"torch {torch.__version__}" in device else f", torch {torch.__version__}"
    with human_output(args.json):
        print(f"device: {device}{software}\n")
        sys.stdout.flush()
        results = []
        for group in groups:
            results.append(run_group(group, args))
            sys.stdout.flush()
        print(f"wall time {time.perf_counter() - start:.0f} s")
    if args.json:
        print_json({"device": device, "threads": args.threads, "groups": results,
                    "wall_s": time.perf_counter() - start})


if __name__ == "__main__":
    main()
