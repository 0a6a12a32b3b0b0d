"""A campaign driver for fault-injection tests: the real runner, study, Ray and trainer, with faults on chosen specs.

    python fault_driver.py CAMPAIGN.yaml FAULTS.json LOG.jsonl

FAULTS.json maps a spec's block strings (space-joined) to a fault; every other spec trains normally:

- ``out_of_memory``: trains at 1024 px (tens of GB of activations for a batch) in a worker whose address space
  is capped at its current size plus 256 MiB for the trial, so torch's allocator fails for real, fast, and
  without pushing the machine into swap or the kernel's OOM killer;
- ``nan``: trains with a learning rate of 1e6 (the largest TrainConfig allows), so the loss really diverges;
- ``raise``: an exception from inside training (the end-of-epoch callback);
- ``kill_me``: the first time, writes the worker's pid to ``LOG.jsonl.pid`` and waits to be killed (by SIGKILL from
  the test); a re-run of the same spec trains normally.

Each evaluation appends a line to LOG.jsonl: the fault, the status, the worker's pid, its resident memory and the
number of live torch tensors before and after the trainer ran (after a garbage collection), so a test can check
that a failed trial gave its memory back. The driver runs in ``__main__``, so Ray pickles the trainer by value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from nas.campaign import load_campaign, run_campaign
from nas.data import ImageData
from nas.halving import Rungs
from nas.recipe import TrainConfig
from nas.records import EvalResult
from nas.runner import RayExecutor
from nas.train import train_and_evaluate
from search_spaces.spec import ArchSpec


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def virtual_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def address_space_cap(limit: int | None):
    """Caps the process's address space at ``limit`` bytes (None: no cap) for the block, then restores it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def live_tensors() -> int:
    gc.collect()
    return sum(1 for value in gc.get_objects() if isinstance(value, torch.Tensor))


def make_trainer(faults: dict[str, str], log: Path):
    def faulty_trainer(spec: ArchSpec, data: ImageData, config: TrainConfig, rungs: Rungs | None = None) -> EvalResult:
        fault = faults.get(" ".join(spec.block_strings))
        pid_file = Path(f"{log}.pid")
        on_epoch = None
        memory_cap = None
        if fault == "out_of_memory":
            config = dataclasses.replace(config, image_size=1024)
            memory_cap = virtual_bytes() + (256 << 20)
        elif fault == "nan":
            config = dataclasses.replace(config, learning_rate=1e6)
        elif fault == "raise":
            def on_epoch(stats):
                raise RuntimeError("injected fault after epoch 1")
        elif fault == "kill_me" and not pid_file.exists():
            pid_file.write_text(str(os.getpid()))
            time.sleep(600)
        before = (resident_bytes(), live_tensors())
        with address_space_cap(memory_cap):
            result = train_and_evaluate(spec, data, config, on_epoch=on_epoch, rungs=rungs)
        after = (resident_bytes(), live_tensors())
        with log.open("a") as file:
            file.write(json.dumps({"fault": fault, "status": result.status, "reason": result.failure_reason,
                                   "pid": os.getpid(), "rss_before": before[0], "rss_after": after[0],
                                   "tensors_before": before[1], "tensors_after": after[1]}) + "\n")
        return result

    return faulty_trainer


def main() -> int:
    campaign, faults, log = sys.argv[1:4]
    trainer = make_trainer(json.loads(Path(faults).read_text()), Path(log).resolve())
    outcome = run_campaign(load_campaign(campaign), RayExecutor(trainer=trainer))
    print(f"finished {outcome.finished}/{outcome.budget}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
