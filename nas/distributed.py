"""Data-parallel training on torch.distributed: what ``torchrun ... -m nas train`` needs beyond one process.

A launcher (``torchrun``, Ray Train's ``TorchTrainer``) starts one process per device and tells each its place in
the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); :func:`from_environment`
reads it and :func:`process_group` joins the group (NCCL on CUDA, gloo on CPU). The training loop then sees a
:class:`DataParallel`: the rank, the number of ranks and whether batch norm is global.

How one run stays one run, whatever the number of ranks (DESIGN.md, "Final training scales out"):

- The batch is global. Every rank draws the same seeded order of the whole training set and takes its share of each
  global batch (:class:`~nas.data.DeviceBatches`), so the samples of a step do not depend on the number of ranks.
- Gradients are averaged by ``DistributedDataParallel``; with equal shares that is the gradient of the global
  batch's mean loss, the one-process gradient up to the order of float additions.
- Batch norm normalizes with each rank's share unless ``sync_batch_norm``, which makes its statistics those of
  the global batch (:class:`GlobalBatchNorm2d` on CPU, where torch's ``SyncBatchNorm`` refuses to run; torch's own
  on CUDA). With it, and no per-rank randomness, ranks reproduce the one-process run.
- Losses, accuracies and evaluation counts are reduced across ranks (:func:`all_reduce_sum`); rank 0 alone writes
  and prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from nas.data import _derived_seed
from search_spaces.checks import check_int

#: The environment a launcher sets for each process (torchrun, Ray Train): its rank, how many there are, and its
#: rank on its own node (which device it takes).
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: How long a rank waits in a collective for the others before giving up: long enough for rank 0 to write a large
#: checkpoint, short enough that a rank whose peer hangs does not hold its devices for gloo's default 30 minutes.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
_RANK_STREAM = 6  # a stream of nas.data._derived_seed (its docstring lists them all)


class DistributedError(ValueError):
    """A launch this run cannot train under: an environment that is not a launcher's, or a batch that cannot be
    shared evenly."""


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run; the default is a run of one process.

    ``sync_batch_norm`` makes batch-norm statistics those of the global batch instead of each rank's share.
    ``launched``: started by a launcher, which makes even a single rank a member of a process group (the
    data-parallel machinery on one device, e.g. NCCL on a machine with one GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    sync_batch_norm: bool = False
    launched: bool = False

    def __post_init__(self) -> None:
        check_int("world_size", self.world_size, 1)
        check_int("rank", self.rank, 0, self.world_size - 1)
        check_int("local_rank", self.local_rank, 0)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """A member of a process group (launched, or more than one rank): gradients, statistics and counts are
        reduced across its processes."""
        return self.launched or self.world_size > 1

    def share(self, batch_size: int) -> int:
        """Each rank's share of a global batch of ``batch_size``; refuses a batch the ranks cannot share evenly
        (unequal shares would weigh samples unequally in the averaged gradient)."""
        if batch_size % self.world_size:
            raise DistributedError(
                f"--batch-size {batch_size} is the global batch and must be divisible by the {self.world_size} ranks; "
                f"use a multiple of {self.world_size}, e.g. {batch_size - batch_size % self.world_size or self.world_size}"
            )
        return batch_size // self.world_size


def from_environment(*, sync_batch_norm: bool = False) -> DataParallel:
    """The launch this process belongs to, from the variables torchrun (or Ray Train) sets; a run of one process
    when none is set. A partial or malformed set is refused, naming the variable."""
    present = [name for name in ENVIRONMENT if name in os.environ]
    if not present:
        return DataParallel(sync_batch_norm=sync_batch_norm)
    missing = [name for name in ENVIRONMENT if name not in os.environ]
    if missing:
        raise DistributedError(f"the environment sets {', '.join(present)} but not {', '.join(missing)}: launch "
                               "with torchrun (torchrun --nproc-per-node N -m nas train ...) or set all three")
    values = {}
    for name in ENVIRONMENT:
        try:
            values[name] = int(os.environ[name])
        except ValueError:
            raise DistributedError(f"{name} must be an integer, got {os.environ[name]!r}") from None
    try:
        return DataParallel(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"],
                            sync_batch_norm=sync_batch_norm, launched=True)
    except ValueError as error:
        raise DistributedError(f"the launcher's environment: {error}") from None


def device_for(parallel: DataParallel, device: torch.device) -> torch.device:
    """The device this rank trains on: on CUDA each rank of a node takes the GPU of its local rank."""
    if parallel.distributed and device.type == "cuda":
        return torch.device("cuda", parallel.local_rank)
    return device


@contextlib.contextmanager
def process_group(parallel: DataParallel, device: torch.device) -> Iterator[None]:
    """Joins the launch's process group for the block (NCCL on CUDA, gloo otherwise) and leaves it after; nothing
    for a run of one process. The rendezvous (``MASTER_ADDR``, ``MASTER_PORT``) is the launcher's. A group that is
    already there is used as it is and left to its owner: Ray Train's ``TorchTrainer`` sets up the group (and the
    same environment as torchrun) before its workers run, e.g. ``nas.cli.main(["train", ...])``."""
    if not parallel.distributed or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=parallel.rank, world_size=parallel.world_size, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, parallel: DataParallel) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks, in place; ``tensor`` itself in a run of one process."""
    if parallel.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: object, parallel: DataParallel) -> list[object]:
    """Every rank's ``value``, in rank order (picklable objects, e.g. random generator states for a checkpoint)."""
    if not parallel.distributed:
        return [value]
    gathered: list[object] = [None] * parallel.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def decided_by_rank_zero(value: object, parallel: DataParallel) -> object:
    """Rank 0's ``value`` on every rank: for a choice each rank could make differently (how to load the data,
    from its own view of the machine), which must be one choice for the whole run."""
    if not parallel.distributed:
        return value
    chosen = [value]
    dist.broadcast_object_list(chosen, src=0)
    return chosen[0]


@torch.no_grad()
def average_buffers(model: nn.Module, parallel: DataParallel) -> None:
    """Averages the floating-point buffers (batch-norm running statistics) over the ranks, so that every rank
    evaluates, and rank 0 saves, the same network after statistics were gathered on each rank's share."""
    if not parallel.distributed:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(parallel.world_size)


class _AllReduceSum(torch.autograd.Function):
    """The sum over ranks, differentiable: each rank's input gets the sum of every rank's output gradient."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, gradient: torch.Tensor) -> torch.Tensor:
        total = gradient.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics are those of the global batch: the ranks' shares combined.

    For CPU runs (gloo), where torch's ``SyncBatchNorm`` refuses to run. Each rank computes its share's mean and
    mean square per channel, one differentiable all-reduce sums them (shares are equal, so the global mean is the
    mean of the ranks' means), and the gradient flows back to every rank's input through the same all-reduce.
    Running statistics follow ``nn.BatchNorm2d`` (unbiased variance, ``momentum`` None for a cumulative average).
    In evaluation, or with one process, it is ``nn.BatchNorm2d``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        world_size = dist.get_world_size()
        channels = input.shape[1]
        count = input.numel() // channels * world_size  # values per channel in the global batch
        values = input.float()  # moments in float32 under autocast: a bf16 mean square less a squared mean cancels
        # One all-reduce of both moments (a second, of their gradients, in backward): on gloo each costs about a
        # millisecond, which is why global batch norm is slow on CPU (benchmarks/RESULTS.md, data-parallel).
        local = torch.cat([values.mean(dim=(0, 2, 3)), values.square().mean(dim=(0, 2, 3))])  # (2C,)
        moments = _AllReduceSum.apply(local) / world_size
        mean, mean_square = moments[:channels], moments[channels:]
        variance = (mean_square - mean.square()).clamp(min=0)  # biased, as normalization uses
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), variance.detach() * count / max(count - 1, 1))
        scale = torch.rsqrt(variance + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.affine else 0)
        return (values * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(input.dtype)  # (N, C, H, W)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_variance: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased_variance, factor)


def convert_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every ``BatchNorm2d`` made global (``sync_batch_norm``): torch's ``SyncBatchNorm`` on CUDA,
    :class:`GlobalBatchNorm2d` elsewhere. Weights and running statistics carry over."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _replace_batch_norm(model)


def _replace_batch_norm(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        norm = GlobalBatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum,
                                 affine=module.affine, track_running_stats=module.track_running_stats)
        norm.load_state_dict(module.state_dict())
        norm.train(module.training)
        return norm
    for name, child in module.named_children():
        module.add_module(name, _replace_batch_norm(child))
    return module


def rank_seed(seed: int, parallel: DataParallel) -> int:
    """The seed of this rank's own random draws (dropout, stochastic depth, mixup): ``seed`` on rank 0, so a run
    of one process is unchanged; a different, fixed one on each other rank, so ranks do not draw the same masks."""
    if parallel.rank == 0:
        return seed
    return _derived_seed(seed, _RANK_STREAM, parallel.rank)
