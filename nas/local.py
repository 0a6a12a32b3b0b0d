"""The in-process executor: a campaign's trials one after another in the driver's own process, without Ray.

For debugging (a breakpoint or a profiler sees the trial), for machines where Ray cannot start, and for tests of
the campaign that do not need Ray. The results are the same study records as under Ray; only the parallelism
differs (one trial at a time, ``cpus_per_trial`` threads, the GPU when there is one). Successive halving's rungs
are judged in this process, by a direct call to :meth:`~nas.campaign.Campaign.judge`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
from typing import Iterator

import torch

from nas.campaign import Campaign, CampaignConfig, Placement, StopSignal, check_placeable
from nas.data import ImageData, load_data
from nas.evaluate import Trainer, evaluate_candidate
from nas.measure import resolve_device
from nas.train import train_and_evaluate


class LocalExecutor:
    """Runs the campaign's trials in this process, one at a time, until the policy is over. SIGTERM or Ctrl-C
    interrupts the trial under way (it runs once more on resume)."""

    def __init__(self, *, trainer: Trainer = train_and_evaluate) -> None:
        self.trainer = trainer

    def prepare(self, config: CampaignConfig) -> None:
        """Refuses, before the study is opened, a trial this machine cannot hold (Ray's check, on this machine: a
        trial's CPUs and GPUs) and a device it does not have."""
        this_machine = {"Alive": True, "NodeManagerAddress": "this machine",
                        "Resources": {"CPU": len(os.sched_getaffinity(0)), "GPU": torch.cuda.device_count()}}
        gpus = config.gpus_per_trial if config.gpus_per_trial is not None else min(1, torch.cuda.device_count())
        check_placeable([this_machine], cpus=config.cpus_per_trial, gpus=gpus, where="this machine (--executor local)")
        _device(config)

    def run(self, campaign: Campaign, stop: StopSignal) -> None:
        config = campaign.config
        device = _device(config)
        data = load_campaign_data(campaign, Placement(workers=1, threads=config.cpus_per_trial, device=str(device)))
        train = dataclasses.replace(config.train, device=str(device), threads=config.cpus_per_trial)
        data = data.to(device)
        with _heartbeat(campaign):
            while (proposal := campaign.next_trial()) is not None:
                result = evaluate_candidate(proposal.spec, data, train, proposal.plan, self.trainer,
                                            on_timed=functools.partial(campaign.record_timing, proposal.number),
                                            on_rung=functools.partial(campaign.judge, proposal.number))
                campaign.record(proposal.number, result)

    def close(self) -> None:
        """Nothing to release: the trials ran in this process."""


@contextlib.contextmanager
def _heartbeat(campaign: Campaign, every_s: float = 5.0) -> Iterator[None]:
    """Lets the campaign say which trial runs while one trains in this thread (:meth:`Campaign.heartbeat`)."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every_s):
            campaign.heartbeat()

    threading.Thread(target=beat, name="campaign-heartbeat", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def _device(config: CampaignConfig) -> torch.device:
    return resolve_device("cpu" if config.gpus_per_trial == 0 else config.train.device)


def load_campaign_data(campaign: Campaign, placement: Placement) -> ImageData:
    """The campaign's data at its proxy settings (every executor loads it so), once it has said what it runs and
    how (``placement``)."""
    config = campaign.config
    data = load_data(config.data, image_size=config.train.image_size, val_fraction=config.val_fraction,
                     seed=config.seed)
    campaign.start(data.name, train_images=len(data.train_labels), holdout_images=len(data.val_labels),
                   flips=data.flips, num_classes=data.num_classes, in_channels=data.in_channels, placement=placement)
    return data
