"""Our proxy-training loop against the loop a user would write, on the same model, data and number of epochs.

Ours: the dataset as uint8 on the device, batches cut and augmented there (random crop with padding, flip),
channels_last, the training step that ``nas train`` assembles (``nas.step.build_training_step`` with the default
recipe: optimizer, warm-up-cosine schedule, label smoothing) run by ``nas.train.train_epoch``. Theirs: a
``DataLoader`` over a ``TensorDataset`` with per-sample augmentation in Python, float32, NCHW, the same optimizer.
Two middle rows separate the effect of the memory format from that of the data path. Prints training images/s of
each and the ratio to the plain loop.

    python benchmarks/bench_trainer.py                    # CPU, tiny baseline, synthetic 32px, batch 128
    python benchmarks/bench_trainer.py --device cuda --spec efficientnetv2-b0 --batch-size 256

``--json`` prints the result as one JSON object on stdout, the table going to stderr (``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_device_argument,
    add_json_argument,
    human_output,
    print_json,
)
from nas.builder import build_model  # noqa: E402
from nas.data import DeviceBatches, ImageData, load_data  # noqa: E402
from nas.measure import describe_device, prepare_device, resolve_device, synchronize  # noqa: E402
from nas.recipe import TrainConfig, resolve_recipe  # noqa: E402
from nas.step import build_training_step, make_optimizer  # noqa: E402
from nas.train import train_epoch  # noqa: E402
from search_spaces import presets  # noqa: E402
from search_spaces.spec import ArchSpec  # noqa: E402


class PerSampleAugmentation(Dataset):
    """What a user typically writes: crop with padding and flip, one image at a time, in Python."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, padding: int = 4) -> None:
        self.samples = TensorDataset(images, labels)
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.padding = padding

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.samples[index]
        image = image.float() / 255.0
        height, width = image.shape[1:]
        padded = torch.nn.functional.pad(image, [self.padding] * 4)
        top, left = random.randint(0, 2 * self.padding), random.randint(0, 2 * self.padding)
        image = padded[:, top:top + height, left:left + width]
        if random.random() < 0.5:
            image = image.flip(2)
        return (image - self.mean) / self.std, label


def plain_epoch(model, optimizer, loader, device, label_smoothing, channels_last: bool) -> int:
    seen = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += labels.shape[0]
    return seen


RECIPE = TrainConfig()  # the default nas train recipe: both loops use its optimizer and label smoothing


def recipe_for(data: ImageData, batch_size: int) -> TrainConfig:
    """The default recipe at ``batch_size``, resolved for ``data`` as a run resolves it (learning rate, warm-up)."""
    return resolve_recipe(dataclasses.replace(RECIPE, batch_size=batch_size), train_images=len(data.train_labels))


def setup(spec: ArchSpec, data: ImageData, device, channels_last: bool, seed: int, batch_size: int):
    torch.manual_seed(seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(spec, num_classes=data.num_classes).to(device=device, memory_format=memory_format)
    recipe = recipe_for(data, batch_size)
    optimizer = make_optimizer(model, name=recipe.optimizer, learning_rate=recipe.learning_rate,
                               weight_decay=recipe.weight_decay, momentum=recipe.momentum)
    return model, optimizer


def run_ours(spec, data, device, args, channels_last: bool) -> float:
    torch.manual_seed(args.seed)
    model = build_model(spec, num_classes=data.num_classes)
    recipe = dataclasses.replace(recipe_for(data, args.batch_size), epochs=args.epochs + 1, amp=args.amp,
                                 channels_last=channels_last)
    steps_per_epoch = max(1, len(data.train_labels) // args.batch_size)
    step = build_training_step(model, recipe, device=device, steps_per_epoch=steps_per_epoch)
    on_device = data.to(device)

    def batches(images, labels):
        return DeviceBatches(images, labels, batch_size=args.batch_size, mean=data.mean, std=data.std,
                             augment="crop_flip", channels_last=channels_last, seed=args.seed)

    warmup = args.warmup_images
    train_epoch(step, batches(on_device.train_images[:warmup], on_device.train_labels[:warmup]), 1, 1)
    full = batches(on_device.train_images, on_device.train_labels)
    synchronize(device)
    start = time.perf_counter()
    seen = 0
    for epoch in range(1, args.epochs + 1):
        train_epoch(step, full, epoch, args.epochs)
        seen += len(full) * args.batch_size
    synchronize(device)
    return seen / (time.perf_counter() - start)


def run_plain(spec, data, device, args, channels_last: bool) -> float:
    model, optimizer = setup(spec, data, device, channels_last, args.seed, args.batch_size)
    random.seed(args.seed)

    def loader(images, labels):
        dataset = PerSampleAugmentation(images, labels, data.mean, data.std)
        return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                          num_workers=args.workers, pin_memory=device.type == "cuda")

    warmup = args.warmup_images
    smoothing = RECIPE.label_smoothing
    plain_epoch(model, optimizer, loader(data.train_images[:warmup], data.train_labels[:warmup]), device, smoothing,
                channels_last)
    full = loader(data.train_images, data.train_labels)
    synchronize(device)
    start = time.perf_counter()
    seen = sum(plain_epoch(model, optimizer, full, device, smoothing, channels_last) for _ in range(args.epochs))
    synchronize(device)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="tiny", help="preset name or spec file (default: tiny)")
    parser.add_argument("--data", default="synthetic:num_images=10000,image_size=32")
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--warmup-images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the plain loop")
    parser.add_argument("--amp", default="auto", help="precision of our loop (the plain loop is float32)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--seed", type=int, default=0)
    add_json_argument(parser)
    args = parser.parse_args()

    device = resolve_device(args.device)
    prepare_device(device, args.threads)
    spec = presets.resolve_spec(args.spec)
    data = load_data(args.data, seed=args.seed)
    runs = [
        ("plain: DataLoader, per-sample Python augmentation, NCHW", run_plain, False),
        ("plain + channels_last", run_plain, True),
        ("ours, NCHW", run_ours, False),
        ("ours: on-device data and augmentation, channels_last", run_ours, True),
    ]
    rows = [{"loop": label, "images/s": runner(spec, data, device, args, channels_last)}
            for label, runner, channels_last in runs]
    table = pd.DataFrame(rows)
    table["vs plain"] = table["images/s"] / table["images/s"].iloc[0]
    with human_output(args.json):
        print(f"device: {describe_device(device)}")
        print(f"{spec.name or args.spec} on {data.name}, {data.image_size}px, batch {args.batch_size}, "
              f"{args.epochs} epochs of {len(data.train_labels):,} images, amp of ours: {args.amp}")
        width = table["loop"].str.len().max()
        formatters = {"loop": lambda text: text.ljust(width), "images/s": "{:,.0f}".format,
                      "vs plain": "{:.2f}x".format}
        print(table.to_string(index=False, formatters=formatters, justify="left"))
    if args.json:
        print_json({"device": describe_device(device), "spec": spec.name or args.spec, "data": data.name,
                    "image_size": data.image_size, "batch_size": args.batch_size, "epochs": args.epochs,
                    "amp": args.amp, "loops": [{"loop": row["loop"], "images_per_second": row["images/s"],
                                                "vs_plain": row["vs plain"]} for row in table.to_dict("records")]})


if __name__ == "__main__":
    main()
