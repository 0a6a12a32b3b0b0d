"""Data-parallel training and streamed image folders on this machine (issue 26): two tables.

**ranks**: one run on 1 rank and on N ranks, launched by ``torchrun`` (gloo on CPU, NCCL on CUDA; one thread per
rank on CPU): the same spec (dropout and stochastic depth off), data, global batch, seed and no augmentation,
with global batch norm (``--sync-bn``), so the ranks' per-step loss must follow the one-process loss up to float
rounding. Each rank assembles the step ``nas train`` trains with (``build_model``, ``convert_batch_norm``,
``build_training_step(distributed=True)``, ``DeviceBatches`` sharded by rank); per-step losses are reduced over
the ranks once, at the end, so the timed steps carry no extra synchronization. Reported: training images/s over
the steps after warm-up (global images), the speed-up over 1 rank, and the largest relative difference of a
step's loss from the 1-rank loss.

**data**: a generated folder of JPEG images (several sizes, 10 classes) read by the cached path (decoded once into
one uint8 tensor, ``nas.data.load_data``, then ``DeviceBatches``) and streamed (``nas.streaming.StreamingBatches``,
decoding in DataLoader workers at the epoch's size), each in a fresh process: images/s of an epoch of augmented
batches (random-resized crop and flip), the cached path's first load (decode and cache) on its own, and the peak
resident memory (VmHWM) of the main process and of its largest DataLoader worker (whose resident pages are mostly
shared with the main process). Two folder sizes show what grows with the number of images.

    python benchmarks/bench_ddp.py                                   # both tables, CPU
    python benchmarks/bench_ddp.py --part ranks --device cuda --ranks 1 2 --batch-size 256
    python benchmarks/bench_ddp.py --part data --folder-images 2500 5000 --workers 2

``--json`` prints the result as one JSON object on stdout, the tables going to stderr (``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_device_argument,
    add_json_argument,
    human_output,
    machine,
    markdown_table,
    print_json,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "npz:data/fashion-mnist-20k.npz"


# --- ranks ----------------------------------------------------------------------------------------------------------

def rank_worker(args: argparse.Namespace) -> None:
    """One rank of the ranks table (run by torchrun): trains ``args.steps`` steps; rank 0 writes the JSON."""
    import torch

    from nas.builder import build_model
    from nas.data import DeviceBatches, load_data
    from nas.distributed import all_reduce_sum, convert_batch_norm, device_for, from_environment, process_group
    from nas.measure import describe_device, prepare_device, resolve_device, synchronize
    from nas.recipe import TrainConfig, resolve_recipe
    from nas.step import build_training_step
    from search_spaces import presets

    parallel = from_environment(sync_batch_norm=args.sync_bn)
    device = device_for(parallel, resolve_device(args.device))
    prepare_device(device, args.threads if device.type == "cpu" else None)
    spec = dataclasses.replace(presets.resolve_spec(args.spec), dropout=0.0, drop_path_rate=0.0)
    with process_group(parallel, device):
        data = load_data(args.data, seed=0).to(device)
        config = resolve_recipe(TrainConfig(batch_size=args.batch_size, augment="none", epochs=1, seed=0),
                                train_images=len(data.train_labels), flips=data.flips)
        batches = DeviceBatches(data.train_images, data.train_labels, batch_size=args.batch_size, mean=data.mean,
                                std=data.std, augment="none", seed=0, rank=parallel.rank,
                                world_size=parallel.world_size)
        torch.manual_seed(0)
        model = build_model(spec, data.num_classes, data.in_channels)
        if parallel.distributed and parallel.sync_batch_norm:
            model = convert_batch_norm(model, device)
        step = build_training_step(model, config, device=device, steps_per_epoch=max(len(batches), args.steps),
                                   distributed=parallel.distributed)
        losses, started = [], 0.0
        stream = iter(batches)
        for number in range(args.steps):
            if number == args.warmup:
                synchronize(device)
                started = time.perf_counter()
            try:
                images, labels = next(stream)
            except StopIteration:
                stream = iter(batches)
                images, labels = next(stream)
            losses.append(step(images, labels)[0])
        synchronize(device)
        elapsed = time.perf_counter() - started
        total = all_reduce_sum(torch.stack(losses), parallel) / parallel.world_size
        elapsed_max = all_reduce_sum(torch.tensor([elapsed], dtype=torch.float64, device=device), parallel)
    if parallel.is_main:
        record = {"ranks": parallel.world_size, "threads": args.threads, "losses": total.tolist(),
                  "device": describe_device(device),
                  "seconds": elapsed, "seconds_mean": elapsed_max.item() / parallel.world_size,
                  "images_per_second": args.batch_size * (args.steps - args.warmup) / elapsed}
        Path(args.rank_worker).write_text(json.dumps(record))


def run_ranks(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Launches one torchrun per rank count and compares each with the first (1 rank). On CPU a last row runs 1
    rank on 2 threads: the same arithmetic summed in another order, to show how far float rounding alone carries
    the losses apart over the steps."""
    records = []
    from nas.measure import resolve_device

    on_cpu = resolve_device(args.device).type == "cpu"
    runs = [(ranks, 1) for ranks in args.ranks] + ([(1, 2)] if on_cpu else [])
    for ranks, threads in runs:
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "ranks.json"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
                       __file__, "--rank-worker", str(out), "--spec", args.spec, "--data", args.data,
                       "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--device", args.device, "--sync-bn" if args.sync_bn else "--no-sync-bn",
                       "--threads", str(threads)]
            environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
            done = subprocess.run(command, env=environment, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(f"torchrun with {ranks} rank(s) failed:\n{done.stderr[-4000:]}")
            records.append(json.loads(out.read_text()))
    reference = np.array(records[0]["losses"])
    for record in records:
        difference = np.abs(np.array(record["losses"]) - reference) / np.abs(reference)
        record["max_relative_loss_difference"] = float(np.max(difference))
        record["max_relative_loss_difference_20_steps"] = float(np.max(difference[:20]))
        record["speed_up"] = record["images_per_second"] / records[0]["images_per_second"]
    return records


def ranks_table(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [[record["ranks"], record["threads"], args.batch_size, f"{args.batch_size // record['ranks']}",
             f"{record['images_per_second']:.0f}", f"{record['speed_up']:.2f}x",
             f"{record['max_relative_loss_difference_20_steps']:.1e}",
             f"{record['max_relative_loss_difference']:.1e}", f"{record['losses'][-1]:.4f}"]
            for record in records]
    return markdown_table(["ranks", "threads per rank", "global batch", "per rank", "images/s", "speed-up",
                           "max rel. loss diff, steps 1-20", f"steps 1-{args.steps}", "last loss"], rows)


# --- data -------------------------------------------------------------------------------------------------------------

def make_folder(directory: Path, count: int, *, classes: int = 10, seed: int = 0) -> None:
    """``count`` JPEG images in ``classes`` class folders: smooth random colour fields of 48-160 px sides, so that
    decoding costs what photographs of that size cost."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index in range(count):
        folder = directory / f"class{index % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        width, height = (int(side) for side in rng.integers(48, 161, size=2))
        coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
        image.save(folder / f"{index:06d}.jpg", quality=90)


def data_worker(args: argparse.Namespace) -> None:
    """One arm of the data table in this (fresh) process: prints its JSON record on stdout."""
    import torch

    from nas.data import DeviceBatches, load_data
    from nas.measure import prepare_device
    from nas.streaming import StreamingBatches, open_streaming_folder

    prepare_device(torch.device("cpu"), 1)
    folder, arm = Path(args.data_worker[1]), args.data_worker[0]
    options = dict(batch_size=args.batch_size, augment="resized_crop_flip", seed=0, image_size=args.image_size)
    started = time.perf_counter()
    if arm == "cached":
        data = load_data(f"imagefolder:{folder}", image_size=args.image_size, seed=0)
        load_s = time.perf_counter() - started
        batches = DeviceBatches(data.train_images, data.train_labels, mean=data.mean, std=data.std, **options)
    else:
        streamed = open_streaming_folder(folder, image_size=args.image_size, seed=0)
        load_s = time.perf_counter() - started
        batches = StreamingBatches(streamed.train_files, streamed.train_labels, mean=streamed.mean,
                                   std=streamed.std, workers=args.workers, **options)
    seen, workers_kib, started = 0, 0, time.perf_counter()
    for number, (images, _) in enumerate(batches):
        seen += images.shape[0]
        if number % 5 == 0:  # the DataLoader workers live only while the epoch runs
            workers_kib = max([workers_kib, *(_peak_rss_kib(pid) for pid in _children())])
    epoch_s = time.perf_counter() - started
    print(json.dumps({"arm": arm, "load_s": load_s, "epoch_s": epoch_s, "images": seen,
                      "images_per_second": seen / epoch_s, "peak_rss_mib": _peak_rss_kib("self") / 1024,
                      "worker_peak_rss_mib": workers_kib / 1024}))


def _peak_rss_kib(pid: int | str) -> int:
    """A process's peak resident memory (VmHWM, KiB): its own address space's, unlike ``ru_maxrss``, which keeps
    what the process held before it exec'd; 0 for a process that is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def _children() -> list[int]:
    pid = os.getpid()
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_data(args: argparse.Namespace) -> list[dict[str, Any]]:
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        for count in args.folder_images:
            folder = Path(scratch) / f"folder-{count}"
            started = time.perf_counter()
            make_folder(folder, count)
            print(f"generated {count} JPEG images in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            for arm in ("cached", "streamed"):
                command = [sys.executable, __file__, "--data-worker", arm, str(folder), "--batch-size",
                           str(args.batch_size), "--image-size", str(args.image_size), "--workers",
                           str(args.workers)]
                done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)})
                if done.returncode != 0:
                    raise SystemExit(f"the {arm} arm failed:\n{done.stderr[-4000:]}")
                records.append({"folder_images": count, **json.loads(done.stdout.splitlines()[-1])})
    return records


def data_table(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = []
    for record in records:
        first = (f"{record['load_s']:.1f} s decode + cache" if record["arm"] == "cached"
                 else f"{record['load_s']:.1f} s list + statistics")
        workers = "-" if record["arm"] == "cached" else args.workers
        rows.append([record["folder_images"], record["arm"], workers, first, f"{record['images_per_second']:.0f}",
                     f"{record['peak_rss_mib']:.0f}", f"{record['worker_peak_rss_mib']:.0f}"])
    return markdown_table(["images", "path", "workers", "before the first batch", "images/s (epoch)",
                           "peak RSS MiB", "largest worker's peak RSS MiB"], rows)


# --- main -----------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("ranks", "data", "both"), default="both", help="which table(s)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts (the first is the "
                        "reference; default: 1 2)")
    parser.add_argument("--spec", default="tiny", help="spec or preset of the ranks table (default: tiny)")
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"data of the ranks table (default: {DEFAULT_DATA})")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (default: 128)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run of the ranks table")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timed ones")
    parser.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=True,
                        help="global batch norm in the ranks table (default: on; off, each rank normalizes its share "
                             "and losses differ by design)")
    parser.add_argument("--folder-images", type=int, nargs="+", default=[2500, 5000],
                        help="sizes of the generated JPEG folders of the data table (default: 2500 5000)")
    parser.add_argument("--image-size", type=int, default=96, help="image size of the data table (default: 96)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the streamed path")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)  # a rank's, set per run
    parser.add_argument("--rank-worker", help=argparse.SUPPRESS)
    parser.add_argument("--data-worker", nargs=2, help=argparse.SUPPRESS)
    add_device_argument(parser)
    add_json_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rank_worker:
        rank_worker(args)
        return
    if args.data_worker:
        data_worker(args)
        return
    result: dict[str, Any] = {"machine": machine()}
    with human_output(args.json):
        print(f"machine: {result['machine']}")
        if args.part in ("ranks", "both"):
            result["ranks"] = run_ranks(args)
            norm = "--sync-bn" if args.sync_bn else "--no-sync-bn (each rank normalizes its share)"
            print(f"\nranks: {args.spec} on {args.data}, {result['ranks'][0]['device']}, no augmentation, "
                  f"{norm}, {args.steps} steps ({args.warmup} untimed)\n")
            print(ranks_table(result["ranks"], args))
        if args.part in ("data", "both"):
            result["data"] = run_data(args)
            print(f"\ndata: generated JPEG folders at {args.image_size}px, batch {args.batch_size}, "
                  "resized_crop_flip, one epoch of batches (90% of the images: the rest is the hold-out)\n")
            print(data_table(result["data"], args))
    if args.json:
        print_json(result)


if __name__ == "__main__":
    main()
