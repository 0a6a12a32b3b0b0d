"""The builder: a pure function from an :class:`ArchSpec` to a PyTorch module.

Scaling never happens here (see :mod:`nas.scaling`); the spec already holds every channel count and depth.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from nas.blocks import ACTIVATION_LAYERS, BLOCKS, ConvNormAct
from nas.complexity import resolve_in_channels
from search_spaces.checks import check_int
from search_spaces.spec import ArchSpec


class EfficientNet(nn.Module):
    """Stem, stages of MBConv/Fused-MBConv blocks, 1x1 head, global pooling, dropout and a linear classifier."""

    def __init__(self, stem: nn.Module, stages: nn.Sequential, head: nn.Module, dropout: float, classifier: nn.Linear):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.head = head
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map after the head convolution, (N, head_channels, H / total_stride, W / total_stride)."""
        return self.head(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x).mean((2, 3))  # (N, head_channels)
        return self.classifier(self.dropout(features))  # (N, num_classes)


def build_model(spec: ArchSpec, num_classes: int = 1000, in_channels: int | None = None) -> EfficientNet:
    """Builds the network ``spec`` describes, initialized as the reference implementations do.

    ``in_channels`` is the input images' channels (the data's: 1 grayscale, 3 RGB); None takes the spec's pinned
    ``in_channels``, else 3. A value that contradicts the spec's pinned one is refused, naming both.

    Stochastic depth grows linearly with the block index over the whole network (block ``i`` of ``n`` drops
    its residual branch with probability ``drop_path_rate * i / n``), and only the first layer of a stage
    carries the stage's stride and channel change.
    """
    check_int("num_classes", num_classes, 1)
    in_channels = resolve_in_channels(spec, in_channels)
    norm = functools.partial(nn.BatchNorm2d, eps=spec.bn_eps, momentum=spec.bn_momentum)
    activation = ACTIVATION_LAYERS[spec.activation]
    stem = ConvNormAct(
        in_channels, spec.stem_channels, kernel_size=3, stride=spec.stem_stride, norm=norm, activation=activation
    )
    stages = []
    block_index = 0
    channels = spec.stem_channels
    for stage in spec.stages:
        blocks = []
        for layer in range(stage.num_layers):
            blocks.append(
                BLOCKS[stage.op](
                    channels,
                    stage.out_channels,
                    kernel_size=stage.kernel_size,
                    stride=stage.stride if layer == 0 else 1,
                    expand_ratio=stage.expand_ratio,
                    se_ratio=stage.se_ratio,
                    drop_path_rate=spec.drop_path_rate * block_index / spec.num_blocks,
                    norm=norm,
                    activation=activation,
                )
            )
            channels = stage.out_channels
            block_index += 1
        stages.append(nn.Sequential(*blocks))
    head = ConvNormAct(channels, spec.head_channels, kernel_size=1, norm=norm, activation=activation)
    model = EfficientNet(stem, nn.Sequential(*stages), head, spec.dropout, nn.Linear(spec.head_channels, num_classes))
    model.apply(_reference_init)
    return model


def _reference_init(module: nn.Module) -> None:
    """TensorFlow EfficientNet initialization: convolutions N(0, 2 / fan_out) with fan_out per group,
    the classifier U(-1/sqrt(out), 1/sqrt(out)), biases zero, batch norm to identity."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        init_range = 1.0 / math.sqrt(module.out_features)
        nn.init.uniform_(module.weight, -init_range, init_range)
        nn.init.zeros_(module.bias)
