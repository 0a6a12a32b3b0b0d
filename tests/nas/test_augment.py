"""RandAugment ops, rand_augment and mixup on float batches (nas/augment.py)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from nas.augment import (
    RANDAUGMENT_OPS,
    ColourOp,
    GeometricOp,
    _log_standard_gamma,
    _resample,
    mixup,
    rand_augment,
)
from nas.progressive import RANDAUGMENT_MAX_MAGNITUDE

MAGNITUDES = (0, 5, 10, 15, RANDAUGMENT_MAX_MAGNITUDE)
SYMMETRIC_OPS = (
    "Brightness", "Color", "Contrast", "Sharpness", "Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY",
)  # fmt: skip


def random_images(batch: int = 4, side: int = 16, *, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """8-bit images as DeviceBatches will pass them: uint8 levels / 255, float32 (B, C, S, S)."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 256, (batch, channels, side, side), generator=generator, dtype=torch.uint8)
    return levels.float() / 255


def smooth_images(batch: int = 2, side: int = 24) -> torch.Tensor:
    """Images whose values vary smoothly in space, so interpolation errors stay small."""
    rows = torch.linspace(0, 1, side).view(1, 1, side, 1)
    columns = torch.linspace(0, 1, side).view(1, 1, 1, side)
    phases = torch.arange(batch * 3, dtype=torch.float32).view(batch, 3, 1, 1)
    return 0.5 + 0.4 * torch.sin(3 * rows + 2 * columns + phases)


def skewed_images(batch: int = 3, side: int = 24) -> torch.Tensor:
    """8-bit images with non-uniform histograms, so Equalize has work to do."""
    generator = torch.Generator().manual_seed(1)
    values = torch.rand((batch, 3, side, side), generator=generator) ** 3
    return (values * 200 + 20).round() / 255


def ones(batch: int) -> torch.Tensor:
    return torch.ones(batch)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float image of exact 8-bit levels -> PIL RGB image."""
    array = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


# ----------------------------------------------------------------------------------------------- every op


@pytest.mark.parametrize("name", list(RANDAUGMENT_OPS))
@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("sign", (1.0, -1.0))
def test_op_keeps_shape_dtype_and_range(name, magnitude, sign):
    images = random_images(batch=3, side=12)
    output = RANDAUGMENT_OPS[name](images, magnitude, torch.full((3,), sign))
    assert output.shape == images.shape and output.dtype == torch.float32
    assert output.min() >= 0 and output.max() <= 1
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("name", list(RANDAUGMENT_OPS))
def test_op_is_identity_at_magnitude_zero(name):
    for images in (random_images(), torch.rand(4, 3, 16, 16)):  # 8-bit levels and arbitrary floats
        output = RANDAUGMENT_OPS[name](images, 0, torch.tensor([1.0, -1.0, 1.0, -1.0]))
        assert torch.equal(output, images)
        assert output is not images  # a new tensor: callers may modify it in place


@pytest.mark.parametrize("name", [name for name in RANDAUGMENT_OPS if name != "Identity"])
@pytest.mark.parametrize("magnitude", (5, 10, 15))
def test_op_changes_images_at_positive_magnitude(name, magnitude):
    # Skewed histograms not spanning [0, 1], so that AutoContrast and Equalize have something to do.
    images = skewed_images(batch=4)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])
    output = RANDAUGMENT_OPS[name](images, magnitude, signs)
    # Every image changes, whatever its sign.
    assert ((output - images).abs().flatten(1).amax(dim=1) > 1e-3).all()


@pytest.mark.parametrize("name", SYMMETRIC_OPS)
def test_symmetric_ops_depend_on_the_sign(name):
    images = random_images(batch=2, side=16)
    images = torch.cat([images[:1], images[:1]])
    output = RANDAUGMENT_OPS[name](images, 10, torch.tensor([1.0, -1.0]))
    assert not torch.allclose(output[0], output[1], atol=1e-3)


def test_identity_op_returns_a_copy():
    images = random_images()
    output = RANDAUGMENT_OPS["Identity"](images, 15, ones(4))
    assert torch.equal(output, images) and output is not images


def test_ops_are_the_papers_fourteen():
    assert set(RANDAUGMENT_OPS) == {
        "Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize",
        "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
    }  # fmt: skip
    geometric = {name for name, op in RANDAUGMENT_OPS.items() if isinstance(op, GeometricOp)}
    assert geometric == {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}
    assert all(isinstance(op, ColourOp) for name, op in RANDAUGMENT_OPS.items() if name not in geometric)


@pytest.mark.parametrize("magnitude", (-1, RANDAUGMENT_MAX_MAGNITUDE + 1, math.nan, math.inf, True, "5", None))
def test_op_rejects_bad_magnitudes(magnitude):
    with pytest.raises(ValueError, match=r"magnitude must be a number in \[0, 30\]"):
        RANDAUGMENT_OPS["Brightness"](random_images(), magnitude, ones(4))


def test_op_rejects_bad_images_and_signs():
    with pytest.raises(ValueError, match="images must be a floating-point"):
        RANDAUGMENT_OPS["Color"](random_images().to(torch.uint8), 5, ones(4))
    with pytest.raises(ValueError, match="images must be a floating-point"):
        RANDAUGMENT_OPS["Color"](random_images()[0], 5, ones(4))
    with pytest.raises(ValueError, match="images must have 1 or 3 channels"):
        RANDAUGMENT_OPS["Color"](torch.rand(4, 2, 8, 8), 5, ones(4))
    with pytest.raises(ValueError, match=r"signs must be a \(4,\) tensor"):
        RANDAUGMENT_OPS["Color"](random_images(), 5, ones(3))


def test_grey_images_are_supported():
    images = random_images(channels=1)
    for name, op in RANDAUGMENT_OPS.items():
        output = op(images, 10, ones(4))
        assert output.shape == images.shape, name
        assert output.min() >= 0 and output.max() <= 1, name


# ----------------------------------------------------------------------------------------------- geometric ops


def test_translate_x_moves_pixels_by_a_known_amount():
    # 0.045 * magnitude of the width: 9 pixels at magnitude 10 on a 20-pixel side.
    images = random_images(batch=2, side=20)
    output = RANDAUGMENT_OPS["TranslateX"](images, 10, torch.tensor([1.0, -1.0]))
    # Sign +1 reads from x + 9 (content moves left), sign -1 from x - 9; uncovered pixels are grey.
    torch.testing.assert_close(output[0, :, :, :11], images[0, :, :, 9:], atol=1e-4, rtol=0)
    torch.testing.assert_close(output[0, :, :, 11:], torch.full((3, 20, 9), 0.5), atol=1e-6, rtol=0)
    torch.testing.assert_close(output[1, :, :, 9:], images[1, :, :, :11], atol=1e-4, rtol=0)
    torch.testing.assert_close(output[1, :, :, :9], torch.full((3, 20, 9), 0.5), atol=1e-6, rtol=0)


def test_translate_y_moves_rows():
    images = random_images(batch=1, side=20)
    output = RANDAUGMENT_OPS["TranslateY"](images, 10, ones(1))
    torch.testing.assert_close(output[0, :, :11], images[0, :, 9:], atol=1e-4, rtol=0)


def test_translate_is_relative_to_each_side_of_non_square_images():
    images = torch.rand(1, 3, 20, 40)  # 9 rows, 18 columns at magnitude 10
    output = RANDAUGMENT_OPS["TranslateX"](images, 10, ones(1))
    torch.testing.assert_close(output[..., :22], images[..., 18:], atol=1e-4, rtol=0)
    output = RANDAUGMENT_OPS["TranslateY"](images, 10, ones(1))
    torch.testing.assert_close(output[..., :11, :], images[..., 9:, :], atol=1e-4, rtol=0)


def test_rotate_keeps_the_centre_pixel_and_moves_the_rest():
    images = random_images(batch=2, side=21)
    output = RANDAUGMENT_OPS["Rotate"](images, 1, torch.tensor([1.0, -1.0]))  # 3 degrees
    torch.testing.assert_close(output[:, :, 10, 10], images[:, :, 10, 10], atol=1e-5, rtol=0)
    assert (output[:, :, 0, 5] - images[:, :, 0, 5]).abs().max() > 1e-2


def test_rotate_by_90_degrees_permutes_pixels():
    images = random_images(batch=2, side=9)
    output = RANDAUGMENT_OPS["Rotate"](images, 30, torch.tensor([1.0, -1.0]))  # +-90 degrees
    clockwise, counter_clockwise = images.rot90(1, dims=(2, 3)), images.rot90(-1, dims=(2, 3))
    for index in range(2):
        errors = [(output[index] - rotated[index]).abs().max() for rotated in (clockwise, counter_clockwise)]
        assert min(errors) < 1e-4
    # Opposite signs rotate in opposite directions.
    assert not torch.allclose(output[0], output[1], atol=1e-2)


def test_shear_x_shifts_rows_in_proportion_to_their_height():
    # About the top-left corner: row y reads from x + s * (y + 0.5); s = 0.03 * magnitude.
    images = smooth_images(batch=1, side=24)
    output = RANDAUGMENT_OPS["ShearX"](images, 10, ones(1))  # s = 0.3
    torch.testing.assert_close(output[..., 0, :20], images[..., 0, :20], atol=0.05, rtol=0)
    # Row 9.5 (centre 10) reads 3 pixels to the right.
    torch.testing.assert_close(output[..., 9:11, :15].mean(2), images[..., 9:11, 3:18].mean(2), atol=0.05, rtol=0)


def test_geometric_fill_is_grey():
    images = torch.zeros(1, 3, 16, 16)
    output = RANDAUGMENT_OPS["TranslateX"](images, 20, ones(1))  # 0.9 of the side
    assert torch.allclose(output[..., 3:], torch.full_like(output[..., 3:], 0.5))


def test_geometric_ops_compose_in_drawn_order():
    # rand_augment composes a sample's geometric maps into one resampling: warping by A_0 A_1 must equal
    # warping by A_0, then by A_1 (up to interpolation), and differ from the other order.
    images = smooth_images(batch=1, side=32)
    shear = RANDAUGMENT_OPS["ShearX"].pixel_affine(torch.tensor([10.0]), 32, 32)
    rotate = RANDAUGMENT_OPS["Rotate"].pixel_affine(torch.tensor([10.0]), 32, 32)
    sequential = RANDAUGMENT_OPS["Rotate"](RANDAUGMENT_OPS["ShearX"](images, 10, ones(1)), 10, ones(1))
    composed, reversed_order = _resample(images, shear @ rotate), _resample(images, rotate @ shear)
    interior = (..., slice(10, 22), slice(10, 22))
    assert (composed - sequential)[interior].abs().max() < 0.03
    assert (reversed_order - sequential)[interior].abs().max() > 0.1


# ----------------------------------------------------------------------------------------------- colour ops


def test_solarize_inverts_pixels_at_or_above_the_threshold():
    images = random_images()
    output = RANDAUGMENT_OPS["Solarize"](images, 5, ones(4))  # threshold 128 / 255
    above = images >= 128 / 255
    assert torch.equal(output[above], 1 - images[above]) and torch.equal(output[~above], images[~above])
    assert torch.equal(RANDAUGMENT_OPS["Solarize"](images, 10, ones(4)), 1 - images)


def test_posterize_reduces_the_number_of_distinct_values():
    images = random_images(batch=2, side=32)
    assert images.unique().numel() > 200
    for magnitude, bits in ((5, 6), (10, 4), (15, 2), (30, 1)):
        output = RANDAUGMENT_OPS["Posterize"](images, magnitude, ones(2))
        assert output.unique().numel() <= 2**bits
        levels = (output * 255).round().to(torch.int64)
        assert (levels % 2 ** (8 - bits) == 0).all()


def test_brightness_scales_the_mean():
    images = random_images() * 0.5  # no clipping at factor 1.9
    for sign, factor in ((1.0, 1.9), (-1.0, 0.1)):
        output = RANDAUGMENT_OPS["Brightness"](images, 10, torch.full((4,), sign))
        torch.testing.assert_close(output.mean(), images.mean() * factor)


def test_contrast_blends_towards_the_per_image_mean_grey():
    images = random_images()
    mean_grey = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1).mean((1, 2))
    output = RANDAUGMENT_OPS["Contrast"](images, 10, -ones(4))  # factor 0.1
    expected = mean_grey.view(4, 1, 1, 1) + 0.1 * (images - mean_grey.view(4, 1, 1, 1))
    torch.testing.assert_close(output, expected)
    flat = RANDAUGMENT_OPS["Contrast"](images, 15, -ones(4))  # factor clamped at 0: uniform mean grey
    torch.testing.assert_close(flat, mean_grey.view(4, 1, 1, 1).expand_as(images))


def test_color_at_factor_zero_is_grey():
    images = random_images()
    output = RANDAUGMENT_OPS["Color"](images, 15, -ones(4))
    torch.testing.assert_close(output, output[:, :1].expand_as(output))


def test_auto_contrast_spans_the_full_range_per_channel():
    images = 0.2 + 0.5 * random_images()
    images[0, 1] = 0.3  # a constant channel stays as it is
    output = RANDAUGMENT_OPS["AutoContrast"](images, 5, ones(4))
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[0, 1] = False
    assert torch.allclose(output.amin((2, 3))[mask], torch.tensor(0.0))
    assert torch.allclose(output.amax((2, 3))[mask], torch.tensor(1.0))
    assert torch.equal(output[0, 1], images[0, 1])


def test_equalize_matches_pil():
    images = skewed_images()
    images[1, 2] = 77 / 255  # a constant channel: PIL leaves it unchanged
    output = RANDAUGMENT_OPS["Equalize"](images, 10, ones(3))
    for index in range(images.shape[0]):
        expected = from_pil(ImageOps.equalize(to_pil(images[index])))
        assert torch.equal(output[index], expected)


@pytest.mark.parametrize(
    ("name", "pil_op"),
    [
        ("Solarize", lambda image, magnitude: ImageOps.solarize(image, math.ceil(256 * (1 - magnitude / 10)))),
        ("Posterize", lambda image, magnitude: ImageOps.posterize(image, 8 - math.floor(0.4 * magnitude))),
        ("AutoContrast", lambda image, magnitude: ImageOps.autocontrast(image)),
        ("Brightness", lambda image, magnitude: ImageEnhance.Brightness(image).enhance(1 + 0.09 * magnitude)),
        ("Color", lambda image, magnitude: ImageEnhance.Color(image).enhance(1 + 0.09 * magnitude)),
        ("Contrast", lambda image, magnitude: ImageEnhance.Contrast(image).enhance(1 + 0.09 * magnitude)),
        ("Sharpness", lambda image, magnitude: ImageEnhance.Sharpness(image).enhance(1 + 0.09 * magnitude)),
    ],
)
@pytest.mark.parametrize("magnitude", (3, 7))
def test_colour_ops_match_pil_up_to_rounding(name, pil_op, magnitude):
    # PIL works on 8-bit integers; these ops run in float, so they agree to within 8-bit rounding.
    images = skewed_images()
    output = RANDAUGMENT_OPS[name](images, magnitude, ones(3))
    for index in range(images.shape[0]):
        expected = from_pil(pil_op(to_pil(images[index]), magnitude))
        assert (output[index] - expected).abs().max() <= 2.5 / 255, name


# ----------------------------------------------------------------------------------------------- rand_augment


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("batch", (1, 14, 30))
def test_rand_augment_keeps_shape_dtype_and_range(magnitude, batch):
    images = random_images(batch=batch, side=16)
    output = rand_augment(images, magnitude=magnitude, generator=torch.Generator().manual_seed(0))
    assert output.shape == images.shape and output.dtype == torch.float32
    assert output.min() >= 0 and output.max() <= 1
    assert output is not images


def test_rand_augment_does_not_modify_its_input():
    images = random_images(batch=20)
    before = images.clone()
    rand_augment(images, magnitude=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, before)


@pytest.mark.parametrize("num_ops", (1, 2, 3))
def test_rand_augment_is_identity_at_magnitude_zero(num_ops):
    images = torch.rand(30, 3, 16, 16)
    output = rand_augment(images, num_ops=num_ops, magnitude=0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(output, images)


def test_rand_augment_is_determined_by_the_generator_seed():
    images = random_images(batch=32, side=16)
    first, again, other = (
        rand_augment(images, magnitude=9, generator=torch.Generator().manual_seed(seed)) for seed in (5, 5, 6)
    )
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_rand_augment_without_generator_uses_the_default_one():
    images = random_images(batch=8)
    torch.manual_seed(3)
    first = rand_augment(images, magnitude=10)
    torch.manual_seed(3)
    assert torch.equal(rand_augment(images, magnitude=10), first)


def test_rand_augment_chooses_ops_per_sample():
    # 28 copies of one image: every layer gives each of the 14 ops to exactly 2 of them, so outputs differ.
    images = random_images(batch=1, side=16).expand(28, -1, -1, -1).contiguous()
    output = rand_augment(images, num_ops=1, magnitude=10, generator=torch.Generator().manual_seed(0))
    distinct = {tuple(row.tolist()) for row in output.flatten(1).mul(255).round()}
    assert len(distinct) >= 10
    # Some sample drew Identity and kept the image exactly.
    assert (output == images).flatten(1).all(dim=1).any()


def test_rand_augment_choice_is_uniform_per_sample():
    # Over many draws, a fixed sample gets each op about 1/14 of the time. Observable through Identity and
    # Solarize at magnitude 10 (exact inversion): no other op gives either output for these images.
    images = skewed_images(batch=5)
    identity_count = inverted_count = 0
    draws = 700
    generator = torch.Generator().manual_seed(0)
    for _ in range(draws):
        output = rand_augment(images, num_ops=1, magnitude=10, generator=generator)
        identity_count += int(torch.equal(output[3], images[3]))
        inverted_count += int(torch.equal(output[3], 1 - images[3]))
    for count in (identity_count, inverted_count):
        assert abs(count / draws - 1 / 14) < 0.03  # ~4 standard deviations


def test_rand_augment_applies_num_ops_layers():
    # With three layers some image must have drawn two or more non-identity ops.
    images = random_images(batch=1, side=16).expand(28, -1, -1, -1).contiguous()
    generator = torch.Generator().manual_seed(0)
    one = rand_augment(images, num_ops=1, magnitude=10, generator=generator)
    three = rand_augment(images, num_ops=3, magnitude=10, generator=generator)
    assert (three - images).abs().mean() > (one - images).abs().mean()


@pytest.mark.parametrize("num_ops", (0, -1, 1.5, True))
def test_rand_augment_rejects_bad_num_ops(num_ops):
    with pytest.raises(ValueError, match=f"num_ops must be an integer >= 1, got {num_ops!r}"):
        rand_augment(random_images(), num_ops=num_ops, magnitude=5)


def test_rand_augment_rejects_bad_magnitude_and_images():
    with pytest.raises(ValueError, match=r"magnitude must be a number in \[0, 30\], got 31"):
        rand_augment(random_images(), magnitude=31)
    with pytest.raises(ValueError, match="images must be a floating-point"):
        rand_augment((random_images() * 255).to(torch.uint8), magnitude=5)


# ----------------------------------------------------------------------------------------------- mixup


def test_mixup_with_alpha_zero_is_the_identity():
    images, labels = random_images(batch=6), torch.tensor([0, 1, 2, 3, 4, 1])
    mixed = mixup(images, labels, alpha=0, num_classes=5, generator=torch.Generator().manual_seed(0))
    assert mixed.images is images
    assert torch.equal(mixed.targets, torch.eye(5)[labels])
    assert float(mixed.mixing_weight) == 1.0
    assert torch.equal(mixed.permutation, torch.arange(6))


@pytest.mark.parametrize("alpha", (0.2, 1.0, 4.0))
def test_mixup_mixes_images_and_targets_with_the_returned_weight_and_permutation(alpha):
    images, labels = random_images(batch=8), torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1))
    mixed = mixup(images, labels, alpha=alpha, num_classes=10, generator=torch.Generator().manual_seed(2))
    weight, permutation = mixed.mixing_weight, mixed.permutation
    assert weight.shape == () and 0 <= float(weight) <= 1
    assert sorted(permutation.tolist()) == list(range(8)) and not torch.equal(permutation, torch.arange(8))
    torch.testing.assert_close(mixed.images, weight * images + (1 - weight) * images[permutation])
    one_hot = torch.eye(10)[labels]
    torch.testing.assert_close(mixed.targets, weight * one_hot + (1 - weight) * one_hot[permutation])
    torch.testing.assert_close(mixed.targets.sum(dim=1), torch.ones(8))
    assert mixed.images.dtype == torch.float32 and mixed.targets.shape == (8, 10)


def test_mixup_accepts_soft_targets():
    images = random_images(batch=4)
    soft = torch.full((4, 3), 0.1)
    soft[torch.arange(4), torch.tensor([0, 1, 2, 0])] = 0.8
    mixed = mixup(images, soft, alpha=1.0, num_classes=3, generator=torch.Generator().manual_seed(0))
    weight = mixed.mixing_weight
    torch.testing.assert_close(mixed.targets, weight * soft + (1 - weight) * soft[mixed.permutation])
    torch.testing.assert_close(mixed.targets.sum(dim=1), torch.ones(4))


def test_mixup_is_determined_by_the_generator_seed():
    images, labels = random_images(batch=8), torch.arange(8) % 3
    first, again, other = (
        mixup(images, labels, alpha=0.5, num_classes=3, generator=torch.Generator().manual_seed(seed))
        for seed in (4, 4, 5)
    )
    assert torch.equal(first.images, again.images) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.images, other.images)


@pytest.mark.parametrize("alpha", (0.2, 1.0, 4.0))
def test_mixup_weight_follows_beta(alpha):
    generator = torch.Generator().manual_seed(0)
    images, labels = random_images(batch=2, side=2), torch.tensor([0, 1])
    weights = torch.stack(
        [mixup(images, labels, alpha=alpha, num_classes=2, generator=generator).mixing_weight for _ in range(3000)]
    )
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
    assert abs(weights.mean() - 0.5) < 0.03
    assert weights.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.12)


@pytest.mark.parametrize("concentration", (0.2, 1.0, 2.5, 10.0))
def test_gamma_sampler_matches_the_gamma_moments(concentration):
    samples = _log_standard_gamma(concentration, 40000, generator=torch.Generator().manual_seed(0), device="cpu").exp()
    # Gamma(a, 1): mean a and variance a.
    assert samples.mean() == pytest.approx(concentration, rel=0.03)
    assert samples.var() == pytest.approx(concentration, rel=0.08)
    assert (samples > 0).all() and torch.isfinite(samples).all()


@pytest.mark.parametrize("alpha", (-0.1, math.nan, math.inf, True, "1", None))
def test_mixup_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        mixup(random_images(), torch.zeros(4, dtype=torch.int64), alpha=alpha, num_classes=3)


def test_mixup_rejects_bad_labels_and_num_classes():
    images = random_images()
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got 0"):
        mixup(images, torch.zeros(4, dtype=torch.int64), alpha=1.0, num_classes=0)
    with pytest.raises(ValueError, match=r"labels must be int64 class indices \(4,\) or float probabilities \(4, 3\)"):
        mixup(images, torch.zeros(5, dtype=torch.int64), alpha=1.0, num_classes=3)
    with pytest.raises(ValueError, match="labels must be int64 class indices"):
        mixup(images, torch.zeros(4, 2), alpha=1.0, num_classes=3)


# ----------------------------------------------------------------------------------------------- devices


def test_everything_runs_on_the_meta_device():
    # Meta tensors carry no data: any host read (.item(), a boolean mask, a data-dependent shape) would raise,
    # so this proves that the batch paths never synchronize an accelerator.
    images = torch.empty(30, 3, 16, 16, device="meta")
    signs = torch.empty(30, device="meta")
    for name, op in RANDAUGMENT_OPS.items():
        assert op(images, 10, signs).shape == images.shape, name
    assert rand_augment(images, num_ops=3, magnitude=12.5).shape == images.shape
    mixed = mixup(images, torch.empty(30, dtype=torch.int64, device="meta"), alpha=0.2, num_classes=10)
    assert mixed.images.shape == images.shape and mixed.targets.shape == (30, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_are_deterministic_and_never_synchronize():
    images = random_images(batch=64, side=32).cuda()
    labels = torch.arange(64, device="cuda") % 10
    outputs = []
    for _ in range(2):
        generator = torch.Generator(device="cuda").manual_seed(0)
        torch.cuda.set_sync_debug_mode("error")
        try:
            augmented = rand_augment(images, magnitude=15, generator=generator)
            mixed = mixup(augmented, labels, alpha=0.2, num_classes=10, generator=generator)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        outputs.append((augmented, mixed.images, mixed.targets))
    for first, again in zip(*outputs):
        assert torch.equal(first, again)
    assert outputs[0][0].min() >= 0 and outputs[0][0].max() <= 1
    assert not torch.equal(outputs[0][0], images)


def test_generator_on_another_device_is_rejected():
    with pytest.raises(ValueError, match="generator must be on the images' device"):
        rand_augment(torch.empty(2, 3, 8, 8, device="meta"), magnitude=5, generator=torch.Generator())
