"""The training step: forward, loss, backward and optimizer update under autocast.

This is the one definition that proxy training runs and that step-time measurement times, so the S that enters
the reward is the cost of exactly the step the candidate trains with. :func:`build_training_step` is the one
assembly of a network and its step from a :class:`~nas.recipe.TrainConfig` (optimizer, warm-up-cosine schedule,
label smoothing, precision, memory format, compilation): proxy training (``nas.train``), the step time measured
inside training and ``nas bench`` (``nas.measure.benchmark_spec``) all call it, so none of them can drift from
the others.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from nas.recipe import AMP_CHOICES, OPTIMIZERS, TrainConfig
from search_spaces.checks import check_choice, check_int

# With fp16, GradScaler skips optimizer.step() on a step whose gradients overflowed (the first steps, while it finds
# its scale) and the schedule advances all the same, as intended: torch's warning about that order is noise here.
_SKIPPED_STEP_WARNING = r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp``: ``auto`` is bfloat16 on CUDA and none elsewhere (CPU autocast is slow)."""
    check_choice("amp", amp, AMP_CHOICES)
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return _AMP_DTYPES[amp]


def make_optimizer(
    model: nn.Module, *, name: str, learning_rate: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """An optimizer without weight decay on batch-norm parameters and biases (they only shift or scale).

    ``rmsprop`` uses EfficientNet's settings (decay 0.9, momentum 0.9, epsilon 1e-3); ``sgd`` is Nesterov SGD.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate)
    return torch.optim.RMSprop(groups, lr=learning_rate, alpha=0.9, momentum=momentum, eps=1e-3)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class TrainingStep:
    """One optimization step on a batch; returns the loss and the number of correct predictions as device tensors.

    Nothing here synchronizes with the host, so a loop of steps keeps the accelerator busy; callers read the
    returned tensors when they need numbers (once per epoch). fp16 uses a gradient scaler; bf16 needs none.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        amp_dtype: torch.dtype | None,
        label_smoothing: float = 0.0,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.amp_dtype = amp_dtype
        self.label_smoothing = label_smoothing
        self.scheduler = scheduler
        device_type = next(model.parameters()).device.type
        self.device_type = device_type
        self.scaler = torch.amp.GradScaler(device_type) if amp_dtype == torch.float16 else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``labels``: class indices (N,) or target probabilities (N, num_classes)."""
        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(images)  # (N, num_classes)
        loss = nn.functional.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.scheduler is not None and self.scaler is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_SKIPPED_STEP_WARNING, category=UserWarning)
                self.scheduler.step()
        elif self.scheduler is not None:
            self.scheduler.step()
        classes = labels if labels.ndim == 1 else labels.argmax(dim=1)  # mixup gives soft targets
        correct = (logits.detach().argmax(dim=1) == classes).sum()
        return loss.detach(), correct

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's, the schedule's and the gradient scaler's state (the model's weights are not here)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])


def build_training_step(
    model: nn.Module, config: TrainConfig, *, device: torch.device, steps_per_epoch: int, distributed: bool = False
) -> TrainingStep:
    """Assembles ``model``'s training step as ``config`` trains it; the one assembly that training and timing use.

    Moves ``model`` (in place) to ``device`` in ``config.channels_last``'s memory format; builds the optimizer
    (``config.optimizer``, ``learning_rate``, ``momentum``, ``weight_decay``; no decay on norms and biases), the
    warm-up-cosine schedule over ``config.epochs * steps_per_epoch`` steps with ``config.warmup_steps`` of
    warm-up, the loss with ``config.label_smoothing``, autocast at ``config.amp`` resolved
    for ``device``, and ``torch.compile`` when ``config.compile``. The returned step's ``model`` is the compiled
    module when compiling; ``model`` itself stays the plain module whose parameters both share. With
    ``distributed`` (a joined process group, :mod:`nas.distributed`) the step runs ``model`` wrapped in
    ``DistributedDataParallel``, which averages the gradients over the ranks during backward.
    """
    check_int("steps_per_epoch", steps_per_epoch, 1)
    if config.learning_rate is None or config.warmup_steps is None:
        raise ValueError("the recipe's learning_rate and warmup_steps are automatic (None): resolve it for the data "
                         "first (nas.recipe.resolve_recipe)")
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    optimizer = make_optimizer(
        model,
        name=config.optimizer,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
    )
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(total_steps, config.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_steps))
    runnable: nn.Module = model
    if distributed:
        runnable = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    runnable = torch.compile(runnable) if config.compile else runnable
    return TrainingStep(
        runnable,
        optimizer,
        amp_dtype=resolve_amp(config.amp, device),
        label_smoothing=config.label_smoothing,
        scheduler=scheduler,
    )
