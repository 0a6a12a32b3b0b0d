"""Compound scaling (EfficientNet, Section 3.3) and EfficientNetV2's scaling rules: ArchSpec -> ArchSpec.

Depth ``d = alpha^phi``, width ``w = beta^phi`` and resolution ``r = gamma^phi`` under
``alpha * beta^2 * gamma^2 ~ 2``, so that FLOPs grow by about ``2^phi``. Channels are rounded as the references
round them (see :func:`round_channels`), depths by ceiling, and the stem and head scale with the width.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

from search_spaces.checks import check_real
from search_spaces.io import dump_spec
from search_spaces.spec import ArchSpec

V2_MAX_IMAGE_SIZE = 480  # EfficientNetV2 Section 3.4: inference images are capped at 480 pixels
IMAGE_SIZE_DIVISOR = 8
DEPTH_RULES = ("uniform", "later_stages")
MAX_PHI = 100  # far above any family (EfficientNet-B7 is phi = 6); keeps alpha^phi finite (1e9 overflowed)


class CompoundCoefficients(NamedTuple):
    """Multipliers for one phi: depth (layers), width (channels) and resolution (image size)."""

    depth: float
    width: float
    resolution: float


def compound_coefficients(
    phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15, *, tolerance: float = 0.1
) -> CompoundCoefficients:
    """``(alpha^phi, beta^phi, gamma^phi)``; defaults are EfficientNet's grid-searched values (Section 4).

    Raises ``ValueError`` when ``alpha * beta^2 * gamma^2`` is more than ``tolerance`` (relative) away from 2,
    since then each phi step no longer doubles FLOPs.
    """
    for field, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        check_real(field, value, 1)
    check_real("phi", phi, 0, MAX_PHI)
    check_flops_constraint(alpha, beta, gamma, tolerance=tolerance)
    return CompoundCoefficients(depth=alpha**phi, width=beta**phi, resolution=gamma**phi)


def check_flops_constraint(alpha: float, beta: float, gamma: float, *, tolerance: float = 0.1) -> float:
    """Returns ``alpha * beta^2 * gamma^2`` after checking it is within ``tolerance`` (relative) of 2."""
    product = alpha * beta**2 * gamma**2
    if abs(product - 2.0) > tolerance * 2.0:
        raise ValueError(
            f"alpha * beta^2 * gamma^2 must be about 2 (within {tolerance:.0%}), got {product:.3f} "
            f"for alpha={alpha}, beta={beta}, gamma={gamma}"
        )
    return product


def round_channels(channels: float, *, divisor: int = 8, round_limit: float = 0.0) -> int:
    """Rounds a scaled channel count to the nearest multiple of ``divisor`` (at least ``divisor``).

    With ``round_limit > 0`` one divisor is added when rounding went below ``round_limit * channels``:
    EfficientNet (V1) uses 0.9 so that no layer loses more than 10%; EfficientNetV2 uses no guard (0).
    """
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < round_limit * channels:
        rounded += divisor
    return int(rounded)


def scale(
    spec: ArchSpec,
    width_mult: float,
    depth_mult: float,
    image_size: int | None = None,
    *,
    train_image_size: int | None = None,
    round_limit: float | None = None,
    depth_rule: str = "uniform",
    max_image_size: int | None = None,
    dropout: float | None = None,
    name: str | None = None,
) -> ArchSpec:
    """Scales ``spec`` in width and depth, and optionally sets its image size.

    - Channels (stem, every stage, head) are multiplied by ``width_mult`` and rounded with :func:`round_channels`,
      using the spec's ``channel_divisor`` and ``round_limit`` unless ``round_limit`` is given.
    - ``depth_rule="uniform"`` gives each stage ``ceil(depth_mult * num_layers)`` layers (EfficientNet).
      ``depth_rule="later_stages"`` (EfficientNetV2's "gradually add more layers to later stages") adds the same
      total number of layers as the uniform rule, but shares them out in proportion to
      ``num_layers * stage_index`` (1-based), by largest remainder, so later and deeper stages get more.
    - ``image_size`` is the new eval (inference) image size; the train size keeps the spec's train/eval ratio
      (rounded to a multiple of 8) unless ``train_image_size`` is given. Both are capped at ``max_image_size``.
    """
    check_real("width_mult", width_mult, 0, low_open=True)
    check_real("depth_mult", depth_mult, 0, low_open=True)
    if depth_rule not in DEPTH_RULES:
        raise ValueError(f"depth_rule must be one of {DEPTH_RULES}, got {depth_rule!r}")
    limit = spec.round_limit if round_limit is None else round_limit

    def width(channels: int) -> int:
        return round_channels(channels * width_mult, divisor=spec.channel_divisor, round_limit=limit)

    depths = _scaled_depths([stage.num_layers for stage in spec.stages], depth_mult, depth_rule)
    stages = tuple(
        dataclasses.replace(stage, num_layers=num_layers, out_channels=width(stage.out_channels))
        for stage, num_layers in zip(spec.stages, depths)
    )
    eval_size = spec.eval_image_size if image_size is None else image_size
    if train_image_size is None:
        train_image_size = (
            spec.train_image_size
            if image_size is None
            else round_image_size(eval_size * spec.train_image_size / spec.eval_image_size)
        )
    if max_image_size is not None:
        eval_size, train_image_size = min(eval_size, max_image_size), min(train_image_size, max_image_size)
    return dataclasses.replace(
        spec,
        name=name if name is not None else f"{spec.name}-w{width_mult:g}-d{depth_mult:g}",
        stem_channels=width(spec.stem_channels),
        stages=stages,
        head_channels=width(spec.head_channels),
        train_image_size=train_image_size,
        eval_image_size=eval_size,
        dropout=spec.dropout if dropout is None else dropout,
        round_limit=limit,
    )


def compound_scale(
    spec: ArchSpec,
    phi: float,
    *,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    v2_rules: bool = False,
    name: str | None = None,
) -> ArchSpec:
    """Scales ``spec`` by compound coefficient ``phi``; image sizes grow by ``gamma^phi`` (to multiples of 8).

    ``v2_rules`` applies EfficientNetV2's changes (Section 3.4): image sizes capped at 480 and extra depth given
    to the later stages (``depth_rule="later_stages"``).
    """
    coefficients = compound_coefficients(phi, alpha, beta, gamma)

    def resolution(size: int) -> int:
        return size if phi == 0 else round_image_size(size * coefficients.resolution)

    return scale(
        spec,
        coefficients.width,
        coefficients.depth,
        image_size=resolution(spec.eval_image_size),
        train_image_size=resolution(spec.train_image_size),
        depth_rule="later_stages" if v2_rules else "uniform",
        max_image_size=V2_MAX_IMAGE_SIZE if v2_rules else None,
        name=name if name is not None else f"{spec.name}-phi{phi:g}",
    )


def round_image_size(size: float) -> int:
    """An image size rounded to a multiple of 8 (at least 8), friendly to the networks' strides."""
    return max(IMAGE_SIZE_DIVISOR, int(round(size / IMAGE_SIZE_DIVISOR)) * IMAGE_SIZE_DIVISOR)


def image_size_rounding() -> str:
    """How :func:`round_image_size` rounds every scaled image size, in words, for messages that explain one."""
    return f"rounded to a multiple of {IMAGE_SIZE_DIVISOR}"


def _scaled_depths(num_layers: list[int], depth_mult: float, depth_rule: str) -> list[int]:
    uniform = [math.ceil(depth_mult * layers) for layers in num_layers]
    if depth_rule == "uniform" or depth_mult <= 1.0:
        return uniform
    extra = sum(uniform) - sum(num_layers)
    weights = [layers * index for index, layers in enumerate(num_layers, start=1)]
    shares = [extra * weight / sum(weights) for weight in weights]
    added = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: (added[i] - shares[i], -i))
    for i in by_remainder[: extra - sum(added)]:
        added[i] += 1
    return [layers + more for layers, more in zip(num_layers, added)]


def coefficient_grid(*, step: float = 0.05, max_alpha: float = 1.4, max_beta: float = 1.25,
                     tolerance: float = 0.05) -> list[CompoundCoefficients]:
    """EfficientNet's small grid at phi = 1 (Section 3.3, step 2): ``(alpha, beta, gamma)`` on a ``step`` grid,
    each at least 1, with ``alpha * beta^2 * gamma^2`` within ``tolerance`` (relative) of 2.

    For every ``(alpha, beta)`` on the grid, gamma is the grid value closest to ``sqrt(2 / (alpha * beta^2))``.
    Returned as ``CompoundCoefficients(depth=alpha, width=beta, resolution=gamma)``.
    """
    check_real("step", step, 0, 0.5, low_open=True)
    grid = []
    alphas = [round(1 + step * i, 6) for i in range(int(round((max_alpha - 1) / step)) + 1)]
    betas = [round(1 + step * i, 6) for i in range(int(round((max_beta - 1) / step)) + 1)]
    for alpha in alphas:
        for beta in betas:
            ideal_gamma = math.sqrt(2.0 / (alpha * beta**2)) if alpha * beta**2 < 2.0 else 1.0
            gamma = max(1.0, round(round((ideal_gamma - 1) / step) * step + 1, 6))
            if abs(alpha * beta**2 * gamma**2 - 2.0) <= tolerance * 2.0:
                grid.append(CompoundCoefficients(depth=alpha, width=beta, resolution=gamma))
    return grid


def compound_family(
    spec: ArchSpec,
    phis: range | list[int],
    *,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    v2_rules: bool = False,
) -> list[ArchSpec]:
    """One spec per phi, named ``<name>-phi<k>``: the model family of a searched network."""
    return [compound_scale(spec, phi, alpha=alpha, beta=beta, gamma=gamma, v2_rules=v2_rules) for phi in phis]


def family_paths(spec: ArchSpec, directory: Path, phis: range | list[int], *, force: bool) -> list[Path]:
    """Where :func:`write_family` puts each member (``NAME-phiK.yaml`` in ``directory``), checked before any work:
    a spec name that would put a file outside ``directory`` (``../x``, ``/etc/x``) is refused, and so are existing
    files unless ``force``."""
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"-o {directory} must be a directory for --family")
    paths = [directory / f"{spec.name}-phi{phi}.yaml" for phi in phis]
    if any(path.resolve().parent != directory.resolve() for path in paths):
        raise ValueError(f"spec name {spec.name!r} cannot name a file inside -o {directory}: "
                         "rename the spec to a plain file name (no '/')")
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} exist(s); pass --force to overwrite")
    return paths


def write_family(family: list[ArchSpec], paths: list[Path]) -> None:
    """Writes each member of a :func:`compound_family` to its path from :func:`family_paths`."""
    for member, path in zip(family, paths, strict=True):
        dump_spec(member, path)
