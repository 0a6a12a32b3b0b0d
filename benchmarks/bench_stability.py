"""How reproducible is the step time S that enters the reward?

1. One spec benchmarked N times, each in a fresh process (``nas bench --json``): median and coefficient of
   variation (standard deviation / mean) of the N medians.
2. K different specs sampled from a space, each measured twice in fresh processes: Spearman rank correlation of the
   two orderings, i.e. whether the search would rank candidates the same way twice.

    python benchmarks/bench_stability.py                       # CPU, tiny space, 32px, batch 128
    python benchmarks/bench_stability.py --device cuda --space efficientnetv2-s --image-size 128 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from search_spaces import presets
from search_spaces.io import dump_spec


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="timed windows per measurement")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--runs", type=int, default=5, help="fresh-process runs of the same spec")
    parser.add_argument("--specs", type=int, default=8, help="different specs for the rank correlation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

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
        correlation = pd.Series(first).corr(pd.Series(second), method="spearman")
        print(f"Spearman rank correlation of the two orderings: {correlation:.3f}")


if __name__ == "__main__":
    main()
