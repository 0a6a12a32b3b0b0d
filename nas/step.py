"""The training step: forward, loss, backward and optimizer update under autocast.

This is the one definition that proxy training runs and that step-time measurement times, so the S that enters
the reward is the cost of exactly the step the candidate trains with.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
MAX_BATCH_SIZE = 65_536  # images per step; far above what one accelerator holds at any useful image size
OPTIMIZERS = ("sgd", "adamw", "rmsprop")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp``: ``auto`` is bfloat16 on CUDA and none elsewhere (CPU autocast is slow)."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return _AMP_DTYPES[amp]


def make_optimizer(
    model: nn.Module, *, name: str, learning_rate: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """An optimizer without weight decay on batch-norm parameters and biases (they only shift or scale).

    ``rmsprop`` uses EfficientNet's settings (decay 0.9, momentum 0.9, epsilon 1e-3); ``sgd`` is Nesterov SGD.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
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
        if self.scheduler is not None:
            self.scheduler.step()
        classes = labels if labels.ndim == 1 else labels.argmax(dim=1)  # mixup gives soft targets
        correct = (logits.detach().argmax(dim=1) == classes).sum()
        return loss.detach(), correct
