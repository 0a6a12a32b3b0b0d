"""One rank of a data-parallel test run, launched by torchrun from tests/nas/test_distributed.py.

Usage: ``torchrun --nproc-per-node N tests/nas/ddp_rank.py OUT_DIR [--timed]``. Every rank trains the run that
:func:`run_settings` describes through :func:`nas.train.train_and_evaluate` and writes, into ``OUT_DIR``, its
result (``result-RANK.json``) and the paths it was given for weights (``weights-RANK.pt``: only rank 0 may write
its file). With ``--timed`` the run is 2 epochs that measure their step time first, on ranks that see different
speeds (:func:`_loaded`), in a group whose collectives give up after a minute rather than half an hour.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from nas import measure
from nas.data import ImageData, load_data
from nas.distributed import from_environment, process_group
from nas.recipe import TrainConfig
from nas.train import train_and_evaluate
from search_spaces import presets
from search_spaces.spec import ArchSpec


def run_settings() -> tuple[ArchSpec, ImageData, TrainConfig]:
    """A run whose every step is one global batch (90 training images, batch 64: per-epoch loss = per-step loss),
    with no per-rank randomness (no dropout, stochastic depth or augmentation), at 32px where training is stable:
    its 24 steps are the same on 1 and 2 ranks up to float rounding. No batch-norm recalibration, so the saved
    running statistics are those training's momentum updates left (global ones on every rank)."""
    spec = dataclasses.replace(presets.resolve_spec("tiny"), dropout=0.0, drop_path_rate=0.0)
    data = load_data("synthetic:num_images=100,num_classes=4,image_size=32", seed=0)
    config = TrainConfig(epochs=24, batch_size=64, augment="none", learning_rate=0.01, warmup_steps=2,
                         measure_step_time=False, threads=1, bn_recalibration_batches=0)
    return spec, data, config


def _loaded(rank: int) -> None:
    """Rank 1 as if its core were shared: it reads its one-step estimate of the step time (the one that sizes the
    timing windows) 50 times too long, so it would size its windows apart from rank 0's."""
    real = measure.time_window

    def time_window(step: Callable[[], Any], device: torch.device, steps: int) -> float:
        return real(step, device, steps) * (50 if steps == 1 else 1)

    if rank == 1:
        measure.time_window = time_window


def main(out: Path, timed: bool) -> None:
    parallel = from_environment(sync_batch_norm=True)
    spec, data, config = run_settings()
    if timed:
        config = dataclasses.replace(config, epochs=2, measure_step_time=True, timing_warmup=2, timing_repeats=2)
        _loaded(parallel.rank)
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))  # process_group uses it
    weights = out / f"weights-{parallel.rank}.pt"
    with process_group(parallel, torch.device("cpu")):
        result = train_and_evaluate(spec, data, config, weights=weights, parallel=parallel)
    if dist.is_initialized():
        dist.destroy_process_group()
    record: dict[str, Any] = result.to_dict()
    (out / f"result-{parallel.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), timed="--timed" in sys.argv[2:])
