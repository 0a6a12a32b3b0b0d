"""What a network costs: parameters and FLOPs (and, with the proxy trainer, step time).

FLOPs are reported as multiply-adds, the unit of the EfficientNet papers, counted by
``torch.utils.flop_counter`` (convolutions and matrix products; element-wise work is not counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas.builder import build_model
from search_spaces.spec import ArchSpec


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def count_macs(model: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """Multiply-adds of one forward pass of one ``image_size`` x ``image_size`` image, in eval mode.

    The input lives on the model's device, so a model built on the ``meta`` device is counted without
    allocating or computing anything.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class Complexity:
    """Size and cost of a spec: parameters in total and per stage, multiply-adds at ``image_size``."""

    parameters: int
    stage_parameters: tuple[int, ...]
    macs: int
    image_size: int


def spec_complexity(spec: ArchSpec, *, num_classes: int = 1000, image_size: int | None = None) -> Complexity:
    """Parameters and multiply-adds of ``spec`` (at its eval image size unless given), without building weights."""
    image_size = spec.eval_image_size if image_size is None else image_size
    with torch.device("meta"):
        model = build_model(spec, num_classes=num_classes)
    return Complexity(
        parameters=count_parameters(model),
        stage_parameters=tuple(count_parameters(stage) for stage in model.stages),
        macs=count_macs(model, image_size),
        image_size=image_size,
    )
