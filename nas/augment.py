"""RandAugment and mixup on whole float batches on the training device: the regularizers of progressive learning.

EfficientNetV2 (Tan & Le, 2021, Section 4, Algorithm 1, Table 6) grows the image size together with the
regularization strength: RandAugment magnitude (5 -> 15 for V2-S), mixup alpha and dropout. A NAS campaign
trains hundreds of candidates, so augmentation must not be a per-image Python loop on the CPU (DESIGN.md
section 4): every function here takes a batch ``(B, C, H, W)`` of float images in [0, 1] (before normalization)
on any device and costs a fixed number of kernels, with no host synchronization, whatever the random draws.
All randomness comes from one ``torch.Generator`` on the images' device, so a seed fixes the output.

RandAugment (Cubuk et al., "RandAugment: Practical automated data augmentation with a reduced search space",
NeurIPS 2020) applies ``num_ops`` operations drawn uniformly from the paper's 14 (:data:`RANDAUGMENT_OPS`), all
at one shared magnitude.

**Magnitude scale.** ``magnitude`` is a float in [0, :data:`RANDAUGMENT_MAX_MAGNITUDE`] = [0, 30]. Magnitude 10 is the top of
the RandAugment paper's scale (the official EfficientNetV2 code's ``_MAX_LEVEL = 10``), where every operation
reaches the AutoAugment/RandAugment range maximum; larger magnitudes extrapolate linearly, as in the official
EfficientNetV2 code, whose schedules go to 15 (V2-S), 20 (V2-M) and 25 (V2-L), and are clamped where a
parameter leaves its valid range. At magnitude ``m``:

=============  ==========================================================================  ===============
op             parameter at magnitude ``m``                                                  at ``m = 10``
=============  ==========================================================================  ===============
ShearX/Y       shear factor ``+-0.3 * m / 10`` (about the top-left corner, as PIL/TF)       +-0.3
TranslateX/Y   ``+-0.45 * m / 10`` of the image width/height (AutoAugment's 150 px of 331)   +-0.45 side
Rotate         ``+-30 * m / 10`` degrees about the image centre                             +-30 degrees
Brightness,    enhancement factor ``1 +- 0.9 * m / 10``, clamped at >= 0 (PIL's                0.1 .. 1.9
Color,         ImageEnhance factors; 1 is the identity)
Contrast,
Sharpness
Posterize      keeps ``8 - floor(0.4 * m)`` bits, at least 1                                 4 bits
Solarize       inverts pixels ``>= (1 - m / 10) * 256 / 255``, i.e. threshold               all inverted
               ``256 * (1 - m / 10)`` in 8-bit units (m = 5 is TF's default 128)
AutoContrast,  no parameter (as in the paper): the full operation for every ``m > 0``         full
Equalize
Identity       none                                                                         identity
=============  ==========================================================================  ===============

Every parameter grows with ``m`` and equals the identity at ``m = 0``, so magnitude 0 switches RandAugment off.
This follows timm's "increasing" variants rather than the reference TF code, whose enhancement factor
``0.1 + 1.8 * m / 10`` and whose posterize bits and solarize threshold make small magnitudes *strong*.
AutoContrast and Equalize have no magnitude in the paper; they are the identity at exactly ``m = 0`` and the
full operation at any positive magnitude (EfficientNetV2's schedules never go below 5). "+-" is a random sign
drawn per sample and per operation.

Geometric ops resample bilinearly (``grid_sample``, ``align_corners=False``); pixels from outside the image are
filled with grey 0.5, the reference code's 128 (a neutral value; black would add a dark frame that
AutoContrast and Equalize then stretch). Colour ops run in float arithmetic; Posterize and Equalize are defined
on the image's 8-bit levels (``round(255 * x)``), like PIL.

mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018) is :func:`mixup`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F

from nas.progressive import RANDAUGMENT_MAX_MAGNITUDE
from search_spaces.checks import check_int, check_real

PAPER_MAX_MAGNITUDE = 10.0  # top of the RandAugment paper's scale; the official EfficientNetV2 code's _MAX_LEVEL

# Parameters at PAPER_MAX_MAGNITUDE: the AutoAugment search ranges (Cubuk et al., 2019, Table 1) that
# RandAugment reuses; translation as a fraction of the side (150 px of 331) instead of pixels.
SHEAR_AT_PAPER_MAX = 0.3
TRANSLATE_AT_PAPER_MAX = 0.45
ROTATE_DEGREES_AT_PAPER_MAX = 30.0
ENHANCE_AT_PAPER_MAX = 0.9  # factor 1 +- 0.9: PIL ImageEnhance factors in [0.1, 1.9]
POSTERIZE_BITS_REMOVED_PER_MAGNITUDE = 0.4  # 8 bits at m = 0, 4 bits at m = 10, never fewer than 1
FILL_VALUE = 0.5  # grey for pixels that geometric ops bring in from outside the image

# ITU-R 601-2 luma weights, PIL's "L" conversion: the grey of Color and Contrast.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Gamma proposals drawn at once by the Marsaglia-Tsang sampler: each is accepted with probability > 0.95, so
# all 16 are rejected with probability < 1e-20 (then the sampler returns its mode-like value d).
_GAMMA_PROPOSALS = 16


# ----------------------------------------------------------------------------------------------- ops


def _enhance_factors(magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """Per-sample PIL enhancement factors ``1 +- 0.9 * m / 10``, clamped at 0, shaped (B, 1, 1, 1)."""
    factors = 1 + signs * (ENHANCE_AT_PAPER_MAX * magnitude / PAPER_MAX_MAGNITUDE)
    return factors.clamp_min(0).view(-1, 1, 1, 1)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma with PIL's "L" weights; grey images are returned as they are.

    Python-scalar weights, not a weight tensor: building one per call would be a host-to-device copy.
    """
    if images.shape[1] == 1:
        return images
    red, green, blue = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    return red * _LUMA_WEIGHTS[0] + green * _LUMA_WEIGHTS[1] + blue * _LUMA_WEIGHTS[2]


def _brightness(images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """PIL Brightness: blend with black, i.e. scale every pixel by the factor."""
    return (images * _enhance_factors(magnitude, signs)).clamp_(0, 1)


def _color(images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """PIL Color (saturation): blend with the image's own grey (luma) version."""
    # lerp(start, end, 1) is exactly `end`, so factor 1 is the exact identity.
    return torch.lerp(_grey(images), images, _enhance_factors(magnitude, signs)).clamp_(0, 1)


def _contrast(images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """PIL Contrast: blend with a uniform image at the per-image mean grey (mean luma)."""
    mean_grey = _grey(images.mean(dim=(2, 3), keepdim=True))  # (B, 1, 1, 1): luma is linear
    return torch.lerp(mean_grey, images, _enhance_factors(magnitude, signs)).clamp_(0, 1)


def _sharpness(images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """PIL Sharpness: blend with the image smoothed by PIL's 3x3 SMOOTH kernel (border pixels kept, as PIL)."""
    # SMOOTH = (3x3 box sum + 4 * centre) / 13, the box sum as separable shifted slices: on CPU ~4x faster than
    # a depthwise conv2d.
    rows = images[..., :, :-2] + images[..., :, 1:-1] + images[..., :, 2:]  # (B, C, H, W - 2)
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]  # (B, C, H - 2, W - 2)
    smoothed = images.clone()
    smoothed[..., 1:-1, 1:-1] = box.add_(images[..., 1:-1, 1:-1], alpha=4).div_(13)
    return torch.lerp(smoothed, images, _enhance_factors(magnitude, signs)).clamp_(0, 1)


def _posterize(images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """PIL Posterize: keep the ``8 - floor(0.4 * m)`` (at least 1) most significant bits of the 8-bit levels."""
    bits = max(8 - math.floor(POSTERIZE_BITS_REMOVED_PER_MAGNITUDE * magnitude), 1)
    if bits == 8:  # exact identity, also for images whose values are not multiples of 1 / 255
        return images.clone()
    level_step = 2 ** (8 - bits)
    levels = images.mul(255).round_()
    return levels.div_(level_step).floor_().mul_(level_step / 255)


def _solarize(images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """PIL Solarize: invert the pixels at or above ``(1 - m / 10) * 256 / 255`` (none at m = 0, all at m >= 10)."""
    threshold = max(1 - magnitude / PAPER_MAX_MAGNITUDE, 0.0) * 256 / 255
    return torch.where(images >= threshold, 1 - images, images)


def _auto_contrast(images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """PIL AutoContrast: stretch every channel of every image linearly to span [0, 1] (constant channels kept)."""
    if magnitude == 0:
        return images.clone()
    # amin and amax over (H, W): on CPU ~10x faster than aminmax over a flattened view.
    low, high = images.amin(dim=(2, 3), keepdim=True), images.amax(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    spread = high - low
    stretched = (images - low) / spread.clamp_min(torch.finfo(images.dtype).tiny)
    return torch.where(spread > 0, stretched, images).clamp_(0, 1)


def _equalize(images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """PIL Equalize, vectorized: per-channel histograms of the 8-bit levels by one scatter-add, then PIL's LUT.

    PIL's rule per channel: ``step = (pixels - count of the highest level present) // 255``; a channel with
    ``step == 0`` is left unchanged; otherwise level ``i`` maps to ``(step // 2 + pixels below level i) // step``,
    clipped to 255.
    """
    if magnitude == 0:
        return images.clone()
    batch, channels, height, width = images.shape
    levels = images.mul(255).round_().clamp_(0, 255).long().flatten(2)  # (B, C, H * W)
    histograms = torch.zeros((batch, channels, 256), dtype=torch.long, device=images.device)
    histograms.scatter_add_(2, levels, torch.ones((), dtype=torch.long, device=images.device).expand_as(levels))
    top_count = histograms.gather(2, levels.amax(dim=2, keepdim=True))  # (B, C, 1)
    step = (height * width - top_count) // 255
    below = histograms.cumsum(dim=2) - histograms  # pixels strictly below each level
    lookup = ((below + step // 2) // step.clamp_min(1)).clamp_(max=255)
    equalized = lookup.gather(2, levels).view_as(images).to(images.dtype) / 255
    return torch.where(step.view(batch, channels, 1, 1) > 0, equalized, images)


def _identity(images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """The paper's Identity op: the image unchanged (a copy)."""
    return images.clone()


def _shear_x(signed_magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """x_in = x + s * y about the top-left corner (PIL's and TF's ShearX), s = 0.3 * m / 10."""
    matrices = _identity_matrices(signed_magnitude)
    matrices[:, 0, 1] = signed_magnitude * (SHEAR_AT_PAPER_MAX / PAPER_MAX_MAGNITUDE)
    return matrices


def _shear_y(signed_magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """y_in = y + s * x about the top-left corner (PIL's and TF's ShearY), s = 0.3 * m / 10."""
    matrices = _identity_matrices(signed_magnitude)
    matrices[:, 1, 0] = signed_magnitude * (SHEAR_AT_PAPER_MAX / PAPER_MAX_MAGNITUDE)
    return matrices


def _translate_x(signed_magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """x_in = x + t: content moves left by t = 0.45 * m / 10 of the width (right for a negative sign)."""
    matrices = _identity_matrices(signed_magnitude)
    matrices[:, 0, 2] = signed_magnitude * (TRANSLATE_AT_PAPER_MAX / PAPER_MAX_MAGNITUDE * width)
    return matrices


def _translate_y(signed_magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """y_in = y + t: content moves up by t = 0.45 * m / 10 of the height (down for a negative sign)."""
    matrices = _identity_matrices(signed_magnitude)
    matrices[:, 1, 2] = signed_magnitude * (TRANSLATE_AT_PAPER_MAX / PAPER_MAX_MAGNITUDE * height)
    return matrices


def _rotate(signed_magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Rotation by 30 * m / 10 degrees about the image centre, in pixel units (no distortion when H != W)."""
    radians = signed_magnitude * (math.radians(ROTATE_DEGREES_AT_PAPER_MAX) / PAPER_MAX_MAGNITUDE)
    cos, sin = radians.cos(), radians.sin()
    centre_x, centre_y = width / 2, height / 2
    matrices = _identity_matrices(signed_magnitude)
    matrices[:, 0, 0], matrices[:, 0, 1] = cos, -sin
    matrices[:, 1, 0], matrices[:, 1, 1] = sin, cos
    # p_in = R (p_out - c) + c
    matrices[:, 0, 2] = centre_x - cos * centre_x + sin * centre_y
    matrices[:, 1, 2] = centre_y - sin * centre_x - cos * centre_y
    return matrices


def _identity_matrices(like: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) identity matrices in the dtype and on the device of the (B,) tensor ``like``."""
    return torch.eye(3, dtype=like.dtype, device=like.device).repeat(like.shape[0], 1, 1)


def _resample(images: torch.Tensor, pixel_affines: torch.Tensor) -> torch.Tensor:
    """Warps every image by its (B, 3, 3) output-to-input map in pixel coordinates: one grid_sample for the batch.

    Pixel coordinates put the image's top-left corner at (0, 0) and pixel (i, j) centred at (j + 0.5, i + 0.5),
    grid_sample's ``align_corners=False`` convention. The grey fill is a one-pixel ring of ``FILL_VALUE`` around
    the batch with ``padding_mode="border"``: points outside the image read grey, and the image's edge pixels
    blend into grey over half a pixel, as with zero padding of a batch shifted by -0.5 (one pass instead of two).
    The grid is the one ``affine_grid`` would give, built by two broadcast multiply-adds (on CPU ~4x faster).
    """
    batch, _, height, width = images.shape
    device, dtype = images.device, pixel_affines.dtype
    ringed = F.pad(images, (1, 1, 1, 1), value=FILL_VALUE)  # (B, C, H + 2, W + 2)
    column_centres = torch.arange(width, dtype=dtype, device=device) + 0.5  # (W,)
    row_centres = (torch.arange(height, dtype=dtype, device=device) + 0.5)[:, None]  # (H, 1)
    grid = torch.empty((batch, height, width, 2), dtype=dtype, device=device)
    for axis, side in enumerate((width, height)):
        # Input pixel coordinate u -> [-1, 1] coordinate of the ringed image: 2 (u + 1) / (side + 2) - 1.
        scale = 2 / (side + 2)
        x_weight, y_weight, offset = (pixel_affines[:, axis, :, None, None] * scale).unbind(1)  # (B, 1, 1) each
        # grid[..., axis] = a x + b y + c over the output pixel centres (x, y): (B, H, 1) + (B, 1, W).
        torch.add(
            y_weight * row_centres + (offset + (scale - 1)), x_weight * column_centres, out=grid[..., axis]
        )
    warped = F.grid_sample(ringed, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return warped.clamp_(0, 1)


@dataclass(frozen=True)
class ColourOp:
    """A RandAugment op that changes pixel values, not positions: ``transform(images, magnitude, signs)``."""

    name: str
    transform: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]

    def __call__(self, images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
        """Applies the op to every image of ``images`` (B, C, H, W) in [0, 1] at ``magnitude``.

        ``signs`` (B,) holds +1 or -1 per image: the direction of the symmetric ops (the enhancement factor
        ``1 +- 0.9 * m / 10``); ops without a direction ignore it. Returns a new tensor.
        """
        _check_op_arguments(images, magnitude, signs)
        return self.transform(images, float(magnitude), signs.to(images.dtype))


@dataclass(frozen=True)
class GeometricOp:
    """A RandAugment op that is an affine map of pixel coordinates, so several compose into one resampling.

    ``pixel_affine(signed_magnitude, height, width)`` gives (B, 3, 3) output-to-input maps in pixel coordinates
    (origin at the top-left corner) for per-image signed magnitudes (B,).
    """

    name: str
    pixel_affine: Callable[[torch.Tensor, int, int], torch.Tensor]

    def __call__(self, images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
        """Warps every image of ``images`` (B, C, H, W) in [0, 1] by the op at ``magnitude`` in the direction of
        its sign in ``signs`` (B,), one resampling with grey fill. Magnitude 0 returns an exact copy."""
        _check_op_arguments(images, magnitude, signs)
        if magnitude == 0:
            return images.clone()
        signed_magnitude = float(magnitude) * signs.to(torch.float32)
        return _resample(images, self.pixel_affine(signed_magnitude, images.shape[2], images.shape[3]))


RandAugmentOp = ColourOp | GeometricOp

# The 14 operations of the RandAugment paper (Cubuk et al., 2020, Section 3); Invert, Cutout and SolarizeAdd,
# which the official EfficientNetV2 code also draws from, are not among them.
RANDAUGMENT_OPS: Mapping[str, RandAugmentOp] = MappingProxyType(
    {
        op.name: op
        for op in (
            ColourOp("Identity", _identity),
            ColourOp("AutoContrast", _auto_contrast),
            ColourOp("Equalize", _equalize),
            GeometricOp("Rotate", _rotate),
            ColourOp("Solarize", _solarize),
            ColourOp("Color", _color),
            ColourOp("Posterize", _posterize),
            ColourOp("Contrast", _contrast),
            ColourOp("Brightness", _brightness),
            ColourOp("Sharpness", _sharpness),
            GeometricOp("ShearX", _shear_x),
            GeometricOp("ShearY", _shear_y),
            GeometricOp("TranslateX", _translate_x),
            GeometricOp("TranslateY", _translate_y),
        )
    }
)


# ----------------------------------------------------------------------------------------------- RandAugment


def rand_augment(
    images: torch.Tensor, *, num_ops: int = 2, magnitude: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """RandAugment (Cubuk et al., 2020) of a float batch (B, C, H, W) in [0, 1]: ``num_ops`` ops per image.

    For each of the ``num_ops`` layers, every image gets one op of :data:`RANDAUGMENT_OPS`, uniformly at random
    and independently of its other layers (with replacement, as the paper), with its own random sign; all ops
    share ``magnitude`` (module docstring for the scale). Returns a new float tensor of the same shape, dtype and
    range; magnitude 0 returns the images unchanged.

    Vectorization, with no data-dependent shapes and hence no host synchronization:

    - Op choice is *stratified*: in every layer the padded batch of ``G * 14`` slots (``G = ceil(B / 14)``,
      padding rows are discarded) is randomly permuted and slots ``[k * G, (k + 1) * G)`` get op ``k``. Each
      image's op is therefore uniform over the 14, and every colour op runs once per layer on a gathered group
      of exactly ``G`` images, so a layer costs about one pass over the batch, not 14.
    - Geometric ops are composed per image into one affine map (in their drawn order) and applied by one
      ``grid_sample`` over the batch after the colour ops; images without a geometric op keep
      their exact values. Composition resamples once instead of once per geometric op (less blur); the price is
      that a colour op drawn *after* a geometric op sees the unwarped image.

    ``generator`` is a ``torch.Generator`` on the images' device (``None``: the device's default generator);
    the same generator state gives the same output.
    """
    _check_images(images)
    _check_magnitude(magnitude)
    check_int("num_ops", num_ops, 1)
    _check_generator(generator, images.device)
    batch, channels, height, width = images.shape
    magnitude = float(magnitude)
    ops = tuple(RANDAUGMENT_OPS.values())
    group_size = -(-batch // len(ops))
    slot_count = group_size * len(ops)

    # One draw: per layer, a random permutation of the slots (argsort of uniforms) and a sign per slot.
    uniforms = torch.rand((2, num_ops, slot_count), generator=generator, device=images.device)
    slot_images = uniforms[0].argsort(dim=1)  # (L, slots): the padded-batch row that holds each slot
    slot_signs = torch.where(uniforms[1] < 0.5, -1.0, 1.0)  # (L, slots)

    padded = torch.cat([images, images.new_full((slot_count - batch, channels, height, width), FILL_VALUE)])
    for layer in range(num_ops):
        for op_index, op in enumerate(ops):
            if isinstance(op, ColourOp):
                group = slice(op_index * group_size, (op_index + 1) * group_size)
                rows = slot_images[layer, group]
                signs = slot_signs[layer, group].to(images.dtype)
                transformed = op.transform(padded.index_select(0, rows), magnitude, signs)
                padded.index_copy_(0, rows, transformed)
    augmented = padded[:batch]
    if magnitude == 0:  # every geometric op is the identity
        return augmented

    # Per row of the padded batch and layer: the op index and the sign it drew.
    slot_ops = (torch.arange(slot_count, device=images.device) // group_size).expand(num_ops, -1)
    row_ops = torch.empty_like(slot_images).scatter_(1, slot_images, slot_ops)[:, :batch]  # (L, B)
    row_signs = torch.empty_like(slot_signs).scatter_(1, slot_images, slot_signs)[:, :batch]  # (L, B)
    pixel_affines = _identity_matrices(row_signs[0])
    has_geometric_op = torch.zeros(batch, dtype=torch.bool, device=images.device)
    for layer in range(num_ops):
        layer_affines = _identity_matrices(row_signs[layer])
        for op_index, op in enumerate(ops):
            if isinstance(op, GeometricOp):
                chosen = row_ops[layer] == op_index
                op_affines = op.pixel_affine(magnitude * row_signs[layer], height, width)
                layer_affines = torch.where(chosen.view(-1, 1, 1), op_affines, layer_affines)
                has_geometric_op |= chosen
        # The image seen after layers 0..l is image(A_0 A_1 ... A_l p): compose on the right.
        pixel_affines = pixel_affines @ layer_affines
    return torch.where(has_geometric_op.view(-1, 1, 1, 1), _resample(augmented, pixel_affines), augmented)


# ----------------------------------------------------------------------------------------------- mixup


@dataclass(frozen=True)
class MixupBatch:
    """A mixed batch: ``images = mixing_weight * x + (1 - mixing_weight) * x[permutation]``, same for targets.

    ``targets`` are (B, num_classes) probabilities; ``mixing_weight`` is a 0-d tensor on the images' device
    (no host synchronization), ``permutation`` the (B,) partner of each sample.
    """

    images: torch.Tensor
    targets: torch.Tensor
    mixing_weight: torch.Tensor
    permutation: torch.Tensor


def mixup(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> MixupBatch:
    """mixup (Zhang et al., 2018): convex combination of the batch with a random permutation of itself.

    ``labels`` are int64 class indices (B,) or target probabilities (B, num_classes), e.g. label-smoothed. One
    ``lambda ~ Beta(alpha, alpha)`` is drawn per batch, as in the paper's reference code, and the batch is mixed
    with a permutation of itself drawn from ``generator`` (on the images' device; ``None``: the device's default
    generator). Beta is sampled as ``G1 / (G1 + G2)`` with two Gamma(alpha) variates from
    :func:`_log_standard_gamma` (``torch.distributions.Beta`` cannot take a generator).

    ``alpha == 0`` is the identity: the images are returned as they are (the same tensor), the targets are the
    one-hot labels, the weight is 1 and the permutation the identity. EfficientNetV2 (Table 6) grows alpha
    from 0 during progressive learning.
    """
    _check_images(images, require_rgb_or_grey=False)
    check_real("alpha", alpha, 0)
    check_int("num_classes", num_classes, 1)
    _check_generator(generator, images.device)
    batch = images.shape[0]
    if labels.device != images.device:
        raise ValueError(f"labels must be on the images' device {images.device}, got {labels.device}")
    if labels.shape == (batch,) and labels.dtype == torch.int64:
        # scatter, not F.one_hot: no range check that would synchronize on an accelerator.
        targets = images.new_zeros((batch, num_classes)).scatter_(1, labels.view(-1, 1), 1.0)
    elif labels.shape == (batch, num_classes) and labels.is_floating_point():
        targets = labels.to(images.dtype)
    else:
        raise ValueError(
            f"labels must be int64 class indices ({batch},) or float probabilities ({batch}, {num_classes}), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    if alpha == 0:
        return MixupBatch(
            images=images,
            targets=targets,
            mixing_weight=torch.ones((), dtype=images.dtype, device=images.device),
            permutation=torch.arange(batch, device=images.device),
        )
    log_gammas = _log_standard_gamma(float(alpha), 2, generator=generator, device=images.device)
    # G1 / (G1 + G2) = sigmoid(log G1 - log G2): no underflow to 0 / 0 for small alpha.
    mixing_weight = torch.sigmoid(log_gammas[0] - log_gammas[1]).to(images.dtype)
    permutation = torch.randperm(batch, generator=generator, device=images.device)
    # lerp(partner, x, w) = w * x + (1 - w) * partner in one pass.
    mixed_images = torch.lerp(images.index_select(0, permutation), images, mixing_weight)
    mixed_targets = torch.lerp(targets.index_select(0, permutation), targets, mixing_weight)
    return MixupBatch(mixed_images, mixed_targets, mixing_weight, permutation)


def _log_standard_gamma(
    concentration: float, count: int, *, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Logarithms of ``count`` Gamma(concentration, 1) variates, from ``generator``, with no host synchronization.

    Marsaglia & Tsang (2000), "A simple method for generating gamma variables": for shape a >= 1, with
    ``d = a - 1/3``, ``c = 1 / sqrt(9 d)``, a standard normal ``z`` and ``v = (1 + c z)^3``, ``d v`` is accepted
    when ``log u < z^2 / 2 + d - d v + d log v``. All proposals are drawn at once and the first accepted one is
    kept (argmax), so the cost is fixed. Shapes a < 1 use their boost: ``Gamma(a) = Gamma(a + 1) * U^(1 / a)``,
    added in log space so that tiny values do not underflow.
    """
    boosted = concentration + 1 if concentration < 1 else concentration
    d = boosted - 1 / 3
    c = 1 / math.sqrt(9 * d)
    normals = torch.randn((count, _GAMMA_PROPOSALS), generator=generator, device=device, dtype=torch.float64)
    # 1 - rand is in (0, 1]: its logarithm is finite.
    uniforms = 1 - torch.rand((count, _GAMMA_PROPOSALS + 1), generator=generator, device=device, dtype=torch.float64)
    cube_root = 1 + c * normals
    v = cube_root.clamp_min(torch.finfo(torch.float64).tiny) ** 3
    accepted = (cube_root > 0) & (uniforms[:, :-1].log() < normals.square() / 2 + d - d * v + d * v.log())
    first = accepted.to(torch.int32).argmax(dim=1, keepdim=True)  # index of the first accepted proposal
    chosen_v = torch.where(accepted.any(dim=1), v.gather(1, first).squeeze(1), 1.0)
    log_gamma = math.log(d) + chosen_v.log()
    if concentration < 1:
        log_gamma = log_gamma + uniforms[:, -1].log() / concentration
    return log_gamma


# ----------------------------------------------------------------------------------------------- validation


def _check_images(images: torch.Tensor, *, require_rgb_or_grey: bool = True) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        description = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else repr(images)
        raise ValueError(f"images must be a floating-point (B, C, H, W) tensor, got {description}")
    if require_rgb_or_grey and images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels (grey or RGB), got {images.shape[1]}")


def _check_magnitude(magnitude: float) -> None:
    check_real("magnitude", magnitude, 0, int(RANDAUGMENT_MAX_MAGNITUDE))  # int: the message says [0, 30]


def _check_op_arguments(images: torch.Tensor, magnitude: float, signs: torch.Tensor) -> None:
    _check_images(images)
    _check_magnitude(magnitude)
    if not isinstance(signs, torch.Tensor) or signs.shape != images.shape[:1] or signs.device != images.device:
        description = f"{tuple(signs.shape)} on {signs.device}" if isinstance(signs, torch.Tensor) else repr(signs)
        raise ValueError(f"signs must be a ({images.shape[0]},) tensor on {images.device}, got {description}")


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None and torch.device(generator.device).type != device.type:
        raise ValueError(f"generator must be on the images' device {device}, got one on {generator.device}")
