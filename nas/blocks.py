"""Building blocks of EfficientNet-family networks: MBConv, Fused-MBConv, squeeze-excitation, stochastic depth.

Structure and initialization follow the reference implementations (TensorFlow ``efficientnet`` and
``efficientnetv2``), so that a spec builds to exactly their parameter counts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
}


# Makes the normalization layer for a number of channels; one per network, so all layers share its settings.
NormLayer = Callable[[int], nn.Module]


class ConvNormAct(nn.Sequential):
    """Bias-free convolution, batch norm and (optionally) an activation, with 'same' padding for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        norm: NormLayer,
        activation: type[nn.Module] | None,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            norm(out_channels),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018) as used in MBConv: pool, reduce, activate, expand, sigmoid gate."""

    def __init__(self, channels: int, reduced_channels: int, activation: type[nn.Module]) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced_channels, 1)
        self.activation = activation()
        self.expand = nn.Conv2d(reduced_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        scale = self.expand(self.activation(self.reduce(scale)))
        return x * scale.sigmoid()


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drops the residual branch of whole samples while training."""

    def __init__(self, drop_rate: float) -> None:
        super().__init__()
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate == 0.0:
            return x
        keep_prob = 1.0 - self.drop_rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x * mask.bernoulli_(keep_prob).div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate:.4f}"


class ResidualBlock(nn.Module):
    """A named sequence of layers with an identity shortcut when shapes allow it (stride 1, same channels)."""

    def __init__(
        self, layers: dict[str, nn.Module], *, in_channels: int, out_channels: int, stride: int, drop_path_rate: float
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(layers))
        self.has_shortcut = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path_rate) if self.has_shortcut and drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + self.drop_path(out) if self.has_shortcut else out


def se_reduced_channels(in_channels: int, se_ratio: float) -> int:
    """Squeeze width relative to the block input, as in the references: ``max(1, int(in * se_ratio))``."""
    return max(1, int(in_channels * se_ratio))


def mbconv(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int,
    stride: int,
    expand_ratio: int,
    se_ratio: float,
    drop_path_rate: float,
    norm: NormLayer,
    activation: type[nn.Module],
) -> ResidualBlock:
    """Inverted bottleneck (MobileNetV2/MnasNet): 1x1 expand, depthwise kxk, SE, 1x1 linear projection.

    With ``expand_ratio == 1`` the expansion is skipped, as in the reference.
    """
    mid_channels = in_channels * expand_ratio
    layers: dict[str, nn.Module] = {}
    if expand_ratio != 1:
        layers["expand"] = ConvNormAct(in_channels, mid_channels, kernel_size=1, norm=norm, activation=activation)
    layers["depthwise"] = ConvNormAct(
        mid_channels,
        mid_channels,
        kernel_size=kernel_size,
        stride=stride,
        groups=mid_channels,
        norm=norm,
        activation=activation,
    )
    if se_ratio > 0:
        layers["se"] = SqueezeExcite(mid_channels, se_reduced_channels(in_channels, se_ratio), activation)
    layers["project"] = ConvNormAct(mid_channels, out_channels, kernel_size=1, norm=norm, activation=None)
    return ResidualBlock(
        layers, in_channels=in_channels, out_channels=out_channels, stride=stride, drop_path_rate=drop_path_rate
    )


def fused_mbconv(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int,
    stride: int,
    expand_ratio: int,
    se_ratio: float,
    drop_path_rate: float,
    norm: NormLayer,
    activation: type[nn.Module],
) -> ResidualBlock:
    """Fused-MBConv (EfficientNetV2 Figure 2): one kxk convolution replaces the 1x1 expand and the depthwise kxk.

    With ``expand_ratio == 1`` the block is a single kxk convolution with batch norm and activation, as in the
    reference; otherwise a kxk expansion, optional SE and a 1x1 linear projection.
    """
    fused_channels = out_channels if expand_ratio == 1 else in_channels * expand_ratio
    layers: dict[str, nn.Module] = {
        "fused": ConvNormAct(
            in_channels, fused_channels, kernel_size=kernel_size, stride=stride, norm=norm, activation=activation
        )
    }
    if se_ratio > 0:
        layers["se"] = SqueezeExcite(fused_channels, se_reduced_channels(in_channels, se_ratio), activation)
    if expand_ratio != 1:
        layers["project"] = ConvNormAct(fused_channels, out_channels, kernel_size=1, norm=norm, activation=None)
    return ResidualBlock(
        layers, in_channels=in_channels, out_channels=out_channels, stride=stride, drop_path_rate=drop_path_rate
    )


BLOCKS = {"mbconv": mbconv, "fused_mbconv": fused_mbconv}
