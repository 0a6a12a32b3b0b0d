"""EfficientNetV2 Table 3: where should Fused-MBConv go?

EfficientNet-B4 (B0 scaled by width 1.4, depth 1.8) with its MBConv blocks replaced by Fused-MBConv in no stage,
stages 1-3, 1-5 and 1-7. Fused-MBConv carries no squeeze-excitation, as in EfficientNetV2. The paper found fused
blocks in the early stages train faster at a small cost in parameters and FLOPs, and all-fused much slower per
FLOP-efficiency; this prints parameters, FLOPs and measured training throughput on your device.

    python experiments/fused_placement.py --device cuda                      # the paper's 380px
    python experiments/fused_placement.py --device cpu --image-size 128 --batch-size 8

``--json`` prints the result as one JSON object on stdout instead of the table (the convention of
``benchmarks/common.py``, which ``benchmarks/gpu_check.py`` reads).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import pandas as pd

from nas.measure import benchmark_spec, spec_complexity
from nas.scaling import scale
from search_spaces import presets
from search_spaces.spec import ArchSpec

PLACEMENTS = {"no fused": 0, "fused stages 1-3": 3, "fused stages 1-5": 5, "fused stages 1-7": 7}


def efficientnet_b4() -> ArchSpec:
    return scale(presets.get("efficientnet-b0"), 1.4, 1.8, image_size=380, name="efficientnet-b4")


def with_fused_stages(spec: ArchSpec, count: int) -> ArchSpec:
    """``spec`` with its first ``count`` stages turned into Fused-MBConv (no squeeze-excitation)."""
    stages = tuple(
        dataclasses.replace(stage, op="fused_mbconv", se_ratio=0.0) if index < count else stage
        for index, stage in enumerate(spec.stages)
    )
    return dataclasses.replace(spec, stages=stages, name=f"{spec.name}-fused{count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=380)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    args = parser.parse_args()

    b4 = efficientnet_b4()
    rows = []
    device = ""
    for label, count in PLACEMENTS.items():
        spec = with_fused_stages(b4, count)
        complexity = spec_complexity(spec, image_size=args.image_size)
        result = benchmark_spec(
            spec, device=args.device, batch_size=args.batch_size, image_size=args.image_size, amp=args.amp,
            repeats=args.repeats, threads=args.threads,
        )
        device = result.device
        rows.append({
            "EfficientNet-B4": label,
            "params (M)": complexity.parameters / 1e6,
            "FLOPs (B)": complexity.macs / 1e9,
            "train images/s": result.images_per_second,
            "step IQR / median": result.step.relative_spread,
        })
    if args.json:
        print(json.dumps({"device": device, "image_size": args.image_size, "batch_size": args.batch_size,
                          "amp": args.amp, "rows": [{
                              "placement": row["EfficientNet-B4"], "parameters_m": row["params (M)"],
                              "flops_b": row["FLOPs (B)"], "images_per_second": row["train images/s"],
                              "step_relative_spread": row["step IQR / median"]} for row in rows]}))
        return
    print(f"device: {device}; {args.image_size}px, batch {args.batch_size}, amp {args.amp}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
