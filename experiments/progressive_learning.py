"""EfficientNetV2's progressive learning at a scale a CPU can run (Section 4, Algorithm 1; Table 13).

(a) Progressive vs fixed-size training of the same spec at equal epochs: progressive grows the image size from
    ``--min-image-size`` to ``--image-size`` over ``--stages`` stages with adaptively growing regularization; fixed
    trains every epoch at ``--image-size`` with the final regularization. Training time and hold-out accuracy.
(b) Under the same progressive resizing, adaptive regularization (RandAugment and dropout growing with the image
    size) vs fixed regularization (the midpoint values at every stage), as in the paper's Table 13.

Each configuration runs with ``--seeds`` seeds (data, initialization and batches all follow the seed); the tables
give the mean and standard deviation. Evaluation is always at ``--image-size``.

    python experiments/progressive_learning.py                     # tiny on synthetic 48px, 8 epochs, 3 seeds
    python experiments/progressive_learning.py --data cifar10:data/cifar-10-batches-py --image-size 32 --min-image-size 16
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import pandas as pd

from nas.data import load_data
from nas.progressive import ProgressiveConfig
from nas.recipe import TrainConfig
from nas.records import EvalResult
from nas.train import train_and_evaluate
from search_spaces import presets


def training_seconds(result: EvalResult, images_per_epoch: int) -> float:
    """Time spent in training epochs (not in the step-time measurement or the evaluation)."""
    return sum(images_per_epoch / epoch.images_per_second for epoch in result.history)


def configurations(args: argparse.Namespace, experiment: str) -> dict[str, TrainConfig]:
    base = dict(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, device=args.device, threads=args.threads,
                augment=args.augment,
                eval_image_size=args.image_size, timing_warmup=2, timing_repeats=3)
    sizes = (args.min_image_size, args.image_size)
    adaptive = ProgressiveConfig(num_stages=args.stages, image_size=sizes, dropout=tuple(args.dropout),
                                 randaugment_magnitude=tuple(args.randaugment), mixup_alpha=(0.0, 0.0))
    if experiment == "a":
        return {
            "fixed size, final regularization": TrainConfig(
                **base, image_size=args.image_size, randaugment_magnitude=args.randaugment[1]),
            "progressive, adaptive regularization": TrainConfig(**base, progressive=adaptive),
        }
    middle_dropout = sum(args.dropout) / 2
    middle_magnitude = sum(args.randaugment) / 2
    fixed_regularization = ProgressiveConfig(
        num_stages=args.stages, image_size=sizes, dropout=(middle_dropout, middle_dropout),
        randaugment_magnitude=(middle_magnitude, middle_magnitude), mixup_alpha=(0.0, 0.0))
    return {
        "progressive resize, fixed regularization": TrainConfig(**base, progressive=fixed_regularization),
        "progressive resize, adaptive regularization": TrainConfig(**base, progressive=adaptive),
    }


def run(args: argparse.Namespace, experiment: str) -> None:
    spec = presets.resolve_spec(args.spec)
    rows, summary = [], []
    for label, config in configurations(args, experiment).items():
        accuracies, seconds = [], []
        for seed in range(args.seeds):
            data = load_data(args.data, image_size=args.image_size, seed=seed)
            # a fixed-size run takes the final dropout from the spec; progressive stages set their own
            run_spec = dataclasses.replace(spec, dropout=args.dropout[1]) if config.progressive is None else spec
            result = train_and_evaluate(run_spec, data, dataclasses.replace(config, seed=seed))
            if not result.ok:
                raise SystemExit(f"{label}, seed {seed}: {result.failure_reason}")
            images_per_epoch = len(data.train_labels) // config.batch_size * config.batch_size
            accuracies.append(result.accuracy)
            seconds.append(training_seconds(result, images_per_epoch))
            rows.append({"configuration": label, "seed": seed, "accuracy": result.accuracy,
                         "training time (s)": seconds[-1],
                         "image sizes": "/".join(str(epoch.image_size) for epoch in result.history)})
        summary.append({
            "configuration": label,
            "accuracy mean": statistics.mean(accuracies),
            "accuracy std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "training time mean (s)": statistics.mean(seconds),
            "training time std (s)": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
        })
    title = {"a": "(a) progressive vs fixed-size training", "b": "(b) adaptive vs fixed regularization"}[experiment]
    print(f"{title}: {spec.name or args.spec} on {args.data} at {args.image_size}px, {args.epochs} epochs, "
          f"{args.stages} stages from {args.min_image_size}px, RandAugment {args.randaugment[0]:g}->"
          f"{args.randaugment[1]:g}, dropout {args.dropout[0]:g}->{args.dropout[1]:g}, {args.augment}, {args.seeds} seeds")
    print(pd.DataFrame(summary).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=("a", "b", "both"), default="both")
    parser.add_argument("--spec", default="tiny")
    parser.add_argument("--data", default="synthetic:num_images=10000,image_size=48")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--min-image-size", type=int, default=24)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--augment", default="crop_flip", choices=("crop_flip", "resized_crop_flip", "none"),
                        help="base augmentation of both configurations (default: crop_flip)")
    parser.add_argument("--randaugment", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN", "MAX"))
    parser.add_argument("--dropout", type=float, nargs=2, default=(0.1, 0.2), metavar=("MIN", "MAX"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args()
    for experiment in ("a", "b") if args.experiment == "both" else (args.experiment,):
        run(args, experiment)


if __name__ == "__main__":
    main()
