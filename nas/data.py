"""Datasets as uint8 tensors at the proxy resolution, and mini-batches augmented on the training device.

A NAS campaign trains hundreds of candidates for a few epochs each, so data must never be the bottleneck
(DESIGN.md section 4): a dataset is decoded and resized once, kept whole as uint8 NCHW tensors (on the training
device during training), and every batch is cut, augmented and normalized there by a handful of vectorized
kernels. Accuracy comes from a seeded hold-out split of the *training* data ("minival", as in the EfficientNetV2
search); no source's test split is ever read.

Sources (:func:`load_data`) are named ``"NAME[:ARG]"``: ``synthetic``, ``cifar10:DIR``, ``cifar100:DIR``,
``npz:FILE[?images=NAME&labels=NAME]`` and ``imagefolder:DIR``. :func:`check_source` is the cheap pre-flight: it
refuses what :func:`load_data` would refuse wherever that shows without decoding images (npz arrays are checked
from their ``.npy`` headers), so a campaign stops before Ray starts.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from nas.augment import MAX_MAGNITUDE, rand_augment
from search_spaces.files import write_file
from search_spaces.spec import MAX_IMAGE_SIZE

AUGMENTATIONS = ("crop_flip", "resized_crop_flip", "none")
# A classifier head is num_classes wide: a stray label of 5,000,000 must not build a 5,000,001-way head.
MAX_CLASSES = 100_000
SYNTHETIC_OPTIONS = ("num_classes", "num_images", "image_size")
SYNTHETIC_MAXIMUM = {"num_classes": MAX_CLASSES, "num_images": 100_000_000, "image_size": MAX_IMAGE_SIZE}
# A dataset is held whole as uint8 (twice while it is resized): CIFAR-10 is 150 MiB, ImageNet at 128 px 59 GiB.
# The same budget caps every npz array, checked from its header before anything is allocated or decompressed.
MAX_DATASET_BYTES = 64 << 30
NPZ_ARRAYS = ("images", "labels")
# Array names tried, in order, for an npz file whose source names none: this project's, then Keras' (mnist.npz).
NPZ_CONVENTIONS = (("images", "labels"), ("x_train", "y_train"))
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")
DEFAULT_IMAGEFOLDER_SIZE = 64
CACHE_DIRNAME = ".nas-cache"

_CIFAR_SIDE = 32
_RESIZE_CHUNK = 1024  # images resized per interpolate call: bounds the float32 temporary to ~1024 * C * H * W * 4 bytes
_SYNTHETIC_CHUNK = 2048  # images rendered at a time, for the same reason
_CIFAR_BATCH_IMAGES = 10_000  # images per batch file of the CIFAR python release
_CIFAR100_IMAGES = 50_000
_PREFLIGHT_LABEL_BYTES = 64 << 20  # check_source reads an npz labels array up to this size to check its values
_NPZ_READ_CHUNK = 16 << 20  # bytes decompressed per read into an array's buffer
_SHOWN_LABELS = 10  # missing labels listed in a message before the rest is only counted


class DataError(ValueError):
    """A data source that cannot be used: bad source string, missing or malformed files, invalid contents."""


@dataclass(frozen=True, eq=False, repr=False)
class ImageData:
    """A dataset at the proxy resolution: uint8 NCHW tensors for a training split and a held-out split.

    ``mean`` and ``std`` are per-channel statistics of ``train_images`` in [0, 1] units, the normalization
    that :class:`DeviceBatches` applies. The hold-out split (``val_*``) is what a candidate's accuracy is
    measured on; it comes from the source's training data.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        # Metadata checks only (no reductions), so constructing one on an accelerator never synchronizes.
        for split in ("train", "val"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[2] != images.shape[3]:
                raise DataError(
                    f"{split}_images must be a uint8 (N, C, S, S) tensor, got {images.dtype} {tuple(images.shape)}"
                )
            if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
                raise DataError(
                    f"{split}_labels must be an int64 ({images.shape[0]},) tensor, "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
        if self.val_images.shape[1:] != self.train_images.shape[1:]:
            raise DataError(
                f"val_images must have the shape of train_images per image, {tuple(self.train_images.shape[1:])}, "
                f"got {tuple(self.val_images.shape[1:])}"
            )
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise DataError(
                f"mean and std must have one value per channel ({self.in_channels}), got {self.mean} and {self.std}"
            )

    def __repr__(self) -> str:
        # Shapes, not tensor contents: this shows up in logs and assertion messages.
        return (
            f"ImageData(name={self.name!r}, train={tuple(self.train_images.shape)}, "
            f"val={tuple(self.val_images.shape)}, num_classes={self.num_classes}, device={self.train_images.device})"
        )

    @property
    def image_size(self) -> int:
        """Side of the (square) stored images, in pixels."""
        return self.train_images.shape[-1]

    @property
    def in_channels(self) -> int:
        """Channels per image: 3 for RGB, 1 for grayscale."""
        return self.train_images.shape[1]

    def to(self, device: torch.device | str) -> ImageData:
        """The same dataset with its four tensors on ``device``: one copy each, done once per trial, not per batch."""
        return dataclasses.replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            val_images=self.val_images.to(device),
            val_labels=self.val_labels.to(device),
        )


@dataclass(frozen=True)
class SourceSummary:
    """What :func:`check_source` learns about a source without decoding images; None where that is not cheap."""

    num_images: int | None
    in_channels: int | None
    num_classes: int | None


class _Loaded(NamedTuple):
    """What a source loader returns: every training image of the source, before the hold-out split."""

    images: np.ndarray | torch.Tensor  # uint8 (N, C, H, W)
    labels: np.ndarray | torch.Tensor  # integers (N,)
    num_classes: int


def load_data(source: str, *, image_size: int | None = None, val_fraction: float = 0.1, seed: int = 0) -> ImageData:
    """Loads ``source`` (``"NAME[:ARG]"``), resizes it once to ``image_size`` and splits off a seeded hold-out set.

    Sources:

    - ``synthetic`` or ``synthetic:num_classes=10,num_images=10000,image_size=32``: procedural class-dependent
      images (:func:`synthetic_images`), generated from ``seed``; the default for tests and demos.
    - ``cifar10:DIR``: the ``data_batch_*`` files of the CIFAR-10 python version in ``DIR`` (``test_batch`` is
      never read).
    - ``cifar100:DIR``: the ``train`` file of the CIFAR-100 python version (fine labels; ``test`` is never read).
    - ``npz:FILE``: arrays ``images`` (uint8 NHWC, or NHW for grayscale) and ``labels`` (integers, (N,) or
      (N, 1)), or, when those are absent, Keras-style ``x_train`` and ``y_train`` (``x_test``/``y_test`` are never
      read). Other names are given after a ``?``: ``npz:FILE?images=x_train&labels=y_train`` (keys ``images``
      and ``labels``; a file name that holds a ``?`` is written with a trailing ``?``). Labels must be exactly
      0..K-1 with K <= :data:`MAX_CLASSES`; K is the number of classes. Each array is checked from its ``.npy``
      header first (dtype, shape, at most :data:`MAX_DATASET_BYTES`, agreeing with the archive's sizes), and
      never decompressed past the size that header declares.
    - ``imagefolder:DIR``: ``DIR/<class_name>/<image files>``, classes sorted by name; images are converted to
      RGB and resized to ``image_size`` (default 64) by scaling the shorter side and cropping the center, then
      cached in ``DIR/.nas-cache`` (rebuilt when the file list changes; skipped when ``DIR`` is read-only).

    ``image_size`` different from the source's native size resizes every image once here (bilinear with
    antialiasing), never per batch. The hold-out split is the last ``round(val_fraction * N)`` images (at least
    one) of a permutation seeded with ``seed``. A channel that is constant over the training split is refused:
    nothing can be learned from it, and normalization would divide by its zero standard deviation.
    """
    if not isinstance(source, str):
        raise DataError(f"source must be a string 'NAME[:ARG]', got {source!r}")
    if image_size is not None:
        _check_positive_int("image_size", image_size, DataError)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 < val_fraction <= 0.5:
        raise DataError(f"val_fraction must be a number in (0, 0.5], got {val_fraction!r}")
    _check_seed(seed, DataError)
    check_source(source, image_size=image_size, files=False)
    name, _, argument = source.partition(":")
    loaded = _SOURCES[name].load(argument, image_size, seed)
    images = torch.as_tensor(loaded.images)
    labels = torch.as_tensor(loaded.labels).to(torch.int64)
    if images.shape[0] == 0:
        raise DataError(f"data source {source!r} holds no images")
    if int(labels.min()) < 0 or int(labels.max()) >= loaded.num_classes:
        raise DataError(
            f"data source {source!r}: labels must be in [0, {loaded.num_classes}), "
            f"got values from {int(labels.min())} to {int(labels.max())}"
        )
    if image_size is not None and image_size != images.shape[-1]:
        _check_dataset_bytes(source, images.shape[0], images.shape[1], image_size)
        images = _resize_images(images, image_size)
    train_index, val_index = _holdout_split(images.shape[0], val_fraction, seed, source)
    train_images = images.index_select(0, train_index)
    mean, std = _channel_statistics(train_images)
    _check_not_constant(source, mean, std)
    return ImageData(
        name=source,
        train_images=train_images,
        train_labels=labels.index_select(0, train_index),
        val_images=images.index_select(0, val_index),
        val_labels=labels.index_select(0, val_index),
        num_classes=loaded.num_classes,
        mean=mean,
        std=std,
    )


def check_source(source: str, *, image_size: int | None = None, files: bool = True) -> SourceSummary:
    """Refuses a source that :func:`load_data` would refuse, as far as that shows without decoding any image.

    Always checks the source name and its options (synthetic options up to :data:`SYNTHETIC_MAXIMUM`, the
    dataset at ``image_size`` up to :data:`MAX_DATASET_BYTES`, npz array names). With ``files`` it also looks at
    the files: that they exist, the CIFAR batch files, the npz arrays' ``.npy`` headers (and the labels' values
    when that array is at most 64 MiB), the imagefolder's class folders and image count. A campaign runs this
    before it creates its study or starts Ray, so a bad source leaves nothing behind. Returns what it learned
    (:class:`SourceSummary`), for checks such as a batch larger than the dataset.
    """
    if not isinstance(source, str):
        raise DataError(f"source must be a string 'NAME[:ARG]', got {source!r}")
    name, _, argument = source.partition(":")
    if name not in _SOURCES:
        raise DataError(f"unknown data source {name!r} in {source!r}; allowed sources: {', '.join(_SOURCES)}")
    return _SOURCES[name].check(argument, image_size, files)


def _check_dataset_bytes(source: str, count: int, channels: int, image_size: int) -> None:
    size = count * channels * image_size * image_size
    if size > MAX_DATASET_BYTES:
        raise DataError(
            f"data source {source!r}: {count:,} images of {channels}x{image_size}x{image_size} pixels are "
            f"{size / 2**30:,.1f} GiB; the limit is {MAX_DATASET_BYTES / 2**30:.0f} GiB (fewer or smaller images)"
        )


def _check_positive_int(field: str, value: Any, error: type[ValueError]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{field} must be a positive integer, got {value!r}")


def _check_seed(seed: Any, error: type[ValueError]) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise error(f"seed must be a non-negative integer, got {seed!r}")


def _derived_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys, so related streams (data, split, epochs) stay independent."""
    high, low = np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


def holdout_count(count: int, val_fraction: float) -> int:
    """Images held out for accuracy from a source of ``count``: ``round(val_fraction * count)``, at least 1."""
    return max(1, round(val_fraction * count))


def _holdout_split(count: int, val_fraction: float, seed: int, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and hold-out indices: the last :func:`holdout_count` of a seeded permutation."""
    val_count = holdout_count(count, val_fraction)
    if val_count >= count:
        raise DataError(
            f"data source {source!r} has {count} image(s); val_fraction={val_fraction} leaves none to train on"
        )
    generator = torch.Generator().manual_seed(_derived_seed(seed, 1))
    order = torch.randperm(count, generator=generator)
    return order[: count - val_count], order[count - val_count :]


def _channel_statistics(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and standard deviation of uint8 images, in [0, 1] units, from value histograms.

    A channel with a single value has a standard deviation of exactly 0 (the float formula can leave ~1e-9).
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        mean = (counts * values).sum() / total
        variance = ((counts * values.square()).sum() / total - mean.square()).clamp_min(0)
        means.append(float(mean))
        stds.append(0.0 if int(counts.count_nonzero()) == 1 else float(variance.sqrt()))
    return tuple(means), tuple(stds)


def _check_not_constant(source: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Refuses training images with a constant channel, naming it, instead of a later ``std must be positive``."""
    for channel, (channel_mean, channel_std) in enumerate(zip(mean, std)):
        if channel_std == 0:
            raise DataError(
                f"data source {source!r}: all images are constant in channel {channel} of {len(std)} (every "
                f"training pixel is {round(channel_mean * 255)}); nothing can be learned from it: check that the "
                "source holds real images"
            )


def _resize_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, image_size, image_size), bilinear with antialiasing, in chunks."""
    resized = torch.empty((images.shape[0], images.shape[1], image_size, image_size), dtype=torch.uint8)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].to(torch.float32)
        chunk = F.interpolate(
            chunk, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
        resized[start : start + _RESIZE_CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return resized


# ----------------------------------------------------------------------------------------------- synthetic


def _load_synthetic(argument: str, image_size: int | None, seed: int) -> _Loaded:
    options = _synthetic_options(argument)
    # The native size is the option; without one, images are drawn directly at the requested size.
    native_size = options.get("image_size", image_size or 32)
    images, labels = synthetic_images(
        num_classes=options.get("num_classes", 10),
        num_images=options.get("num_images", 10000),
        image_size=native_size,
        seed=seed,
    )
    return _Loaded(images, labels, options.get("num_classes", 10))


def _check_synthetic(argument: str, image_size: int | None, files: bool) -> SourceSummary:
    options = _synthetic_options(argument)
    native_size = options.get("image_size", image_size or 32)
    num_images = options.get("num_images", 10000)
    _check_dataset_bytes(f"synthetic:{argument}", num_images, 3, max(native_size, image_size or 0))
    return SourceSummary(num_images, 3, options.get("num_classes", 10))


def _synthetic_options(argument: str) -> dict[str, int]:
    """``num_classes=10,num_images=500`` as a dict; refuses unknown, repeated, malformed and too-large options."""
    options: dict[str, int] = {}
    for item in filter(None, argument.split(",")):
        key, separator, value = item.partition("=")
        key = key.strip()
        if key not in SYNTHETIC_OPTIONS:
            raise DataError(f"unknown synthetic option {key!r}; allowed options: {', '.join(SYNTHETIC_OPTIONS)}")
        if not separator or not re.fullmatch(r"\s*\d+\s*", value):
            raise DataError(f"synthetic option {key} must be a positive integer 'key=value', got {item!r}")
        if key in options:
            raise DataError(f"synthetic option {key} is given twice in {argument!r}")
        options[key] = int(value)
        if options[key] > SYNTHETIC_MAXIMUM[key]:
            raise DataError(f"synthetic option {key} must be at most {SYNTHETIC_MAXIMUM[key]:,}, got {options[key]:,}")
    return options


def synthetic_images(
    *, num_classes: int = 10, num_images: int = 10000, image_size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural RGB images whose class is learnable but not trivially so: uint8 (N, 3, S, S) and int64 labels.

    Class ``c`` is drawn from a bank of ``num_classes`` coloured sinusoidal gratings (each with its own
    orientation, frequency and colour): a strong grating ``c`` plus a weaker grating ``c + 1``, so
    neighbouring classes share a component, and a Gaussian blob of a class colour at a class position.
    Nuisances that keep a small network from reaching 100% after one epoch: random grating phase, random
    translation of the blob, a distractor grating and blob of another class, per-image contrast, brightness and
    per-channel colour gains, and pixel noise. Labels are balanced (``i % num_classes``, shuffled).

    Everything is drawn from one seeded ``torch.Generator`` and rendered in vectorized chunks: the same seed
    gives bit-identical images on the same machine, a different seed gives different prototypes and images.
    """
    _check_positive_int("num_images", num_images, DataError)
    _check_positive_int("image_size", image_size, DataError)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise DataError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    _check_seed(seed, DataError)
    generator = torch.Generator().manual_seed(_derived_seed(seed, 0))

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    # Prototypes. Orientations are spread over [0, pi) in a seeded order, so classes with near orientations
    # differ by frequency or colour; colours are unit vectors in RGB space around the mean grey.
    orientations = (torch.randperm(num_classes, generator=generator) + uniform(-0.3, 0.3, num_classes)) * (
        math.pi / num_classes
    )
    frequencies = uniform(1.5, 4.5, num_classes)  # cycles per image side
    grating_colours = F.normalize(torch.randn((num_classes, 3), generator=generator), dim=1)
    blob_colours = F.normalize(torch.randn((num_classes, 3), generator=generator), dim=1)
    blob_centres = uniform(0.25, 0.75, num_classes, 2)

    labels = (torch.arange(num_images) % num_classes)[torch.randperm(num_images, generator=generator)]
    # Per-image nuisances.
    distractors = (labels + torch.randint(1, num_classes, (num_images,), generator=generator)) % num_classes
    phases = uniform(0, 2 * math.pi, num_images, 3)
    amplitudes = torch.stack(
        [uniform(0.5, 1.0, num_images), uniform(0.2, 0.7, num_images), uniform(0.0, 0.7, num_images)], dim=1
    )
    blob_shifts = uniform(-0.15, 0.15, num_images, 2)
    blob_amplitudes = torch.stack([uniform(0.4, 1.0, num_images), uniform(0.0, 0.6, num_images)], dim=1)
    distractor_blob_classes = (labels + torch.randint(1, num_classes, (num_images,), generator=generator)) % num_classes
    contrasts = uniform(0.5, 1.0, num_images)
    brightness = uniform(-0.12, 0.12, num_images)
    channel_gains = uniform(0.75, 1.25, num_images, 3)

    # Difficulty, tuned so that the "tiny" preset reaches ~35% after one epoch and ~75% after three (10 classes).
    blob_radius, blob_weight = 0.12, 1.2  # in image sides; blob strength relative to a unit grating
    signal_scale, noise_std = 0.22, 0.11  # in [0, 1] pixel units
    coordinates = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size  # pixel centres in [0, 1)
    rows, columns = coordinates.view(1, -1, 1), coordinates.view(1, 1, -1)
    images = torch.empty((num_images, 3, image_size, image_size), dtype=torch.uint8)
    for start in range(0, num_images, _SYNTHETIC_CHUNK):
        chunk = slice(start, start + _SYNTHETIC_CHUNK)
        chunk_labels = labels[chunk]
        # The three gratings of each image: its class, the next class (shared structure), a distractor.
        components = torch.stack([chunk_labels, (chunk_labels + 1) % num_classes, distractors[chunk]], dim=1)
        angle = orientations[components].unsqueeze(-1).unsqueeze(-1)  # (n, 3, 1, 1)
        wave = 2 * math.pi * frequencies[components].unsqueeze(-1).unsqueeze(-1)
        gratings = torch.cos(
            wave * (columns.unsqueeze(1) * torch.cos(angle) + rows.unsqueeze(1) * torch.sin(angle))
            + phases[chunk].unsqueeze(-1).unsqueeze(-1)
        )  # (n, 3 gratings, S, S)
        gratings = gratings * amplitudes[chunk].unsqueeze(-1).unsqueeze(-1)
        signal = torch.einsum("ngc,ngyx->ncyx", grating_colours[components], gratings)  # (n, RGB, S, S)

        blob_classes = torch.stack([chunk_labels, distractor_blob_classes[chunk]], dim=1)  # (n, 2)
        centres = blob_centres[blob_classes] + blob_shifts[chunk].unsqueeze(1)  # (n, 2 blobs, xy)
        squared_distance = (columns - centres[..., 0, None, None]) ** 2 + (rows - centres[..., 1, None, None]) ** 2
        blobs = torch.exp(squared_distance / (-2 * blob_radius**2)) * blob_amplitudes[chunk].unsqueeze(-1).unsqueeze(-1)
        signal += blob_weight * torch.einsum("nbc,nbyx->ncyx", blob_colours[blob_classes], blobs)

        signal *= (signal_scale * contrasts[chunk]).view(-1, 1, 1, 1)
        signal += 0.5 + brightness[chunk].view(-1, 1, 1, 1)  # around mid grey
        signal *= channel_gains[chunk].view(-1, 3, 1, 1)
        signal += noise_std * torch.randn(signal.shape, generator=generator)
        images[chunk] = (signal * 255).round_().clamp_(0, 255).to(torch.uint8)
    return images, labels


# ----------------------------------------------------------------------------------------------- CIFAR


def _load_cifar10(argument: str, image_size: int | None, seed: int) -> _Loaded:
    batches = [_read_cifar_batch(path, b"labels") for path in _cifar10_batch_files(argument)]
    return _Loaded(
        np.concatenate([images for images, _ in batches]), np.concatenate([labels for _, labels in batches]), 10
    )


def _check_cifar10(argument: str, image_size: int | None, files: bool) -> SourceSummary:
    if not files:
        return SourceSummary(None, 3, 10)
    return SourceSummary(_CIFAR_BATCH_IMAGES * len(_cifar10_batch_files(argument)), 3, 10)


def _cifar10_batch_files(argument: str) -> list[Path]:
    """The ``data_batch_N`` files in the directory, in order of N; refuses a directory without any."""
    directory = _existing_directory("cifar10", argument)
    batch_files = sorted(
        (path for path in directory.iterdir() if re.fullmatch(r"data_batch_\d+", path.name)),
        key=lambda path: int(path.name.rsplit("_", 1)[1]),
    )
    if not batch_files:
        raise DataError(f"cifar10: no data_batch_* files in {directory}")
    return batch_files


def _load_cifar100(argument: str, image_size: int | None, seed: int) -> _Loaded:
    images, labels = _read_cifar_batch(_cifar100_train_file(argument), b"fine_labels")
    return _Loaded(images, labels, 100)


def _check_cifar100(argument: str, image_size: int | None, files: bool) -> SourceSummary:
    if not files:
        return SourceSummary(None, 3, 100)
    _cifar100_train_file(argument)
    return SourceSummary(_CIFAR100_IMAGES, 3, 100)


def _cifar100_train_file(argument: str) -> Path:
    path = _existing_directory("cifar100", argument) / "train"
    if not path.is_file():
        raise DataError(f"cifar100: training file {path} does not exist")
    return path


def _existing_file(source: str, argument: str) -> Path:
    """The file the source names; refuses a missing path and one that is not a regular file (/dev/zero, a FIFO)."""
    if not argument:
        raise DataError(f"{source} needs a file: '{source}:FILE'")
    path = Path(argument).expanduser()
    mode = _file_mode(source, path)
    if mode is None:
        raise DataError(f"{source}: file {path} does not exist")
    if not stat.S_ISREG(mode):
        raise DataError(f"{source}: {path} is not a regular file (it is a {_file_kind(mode)}); give a file")
    return path


def _existing_directory(source: str, argument: str) -> Path:
    if not argument:
        raise DataError(f"{source} needs a directory: '{source}:DIR'")
    directory = Path(argument).expanduser()
    mode = _file_mode(source, directory)
    if mode is None:
        raise DataError(f"{source}: directory {directory} does not exist")
    if not stat.S_ISDIR(mode):
        raise DataError(f"{source}: {directory} is not a directory (it is a {_file_kind(mode)}); give a directory")
    return directory


def _file_mode(source: str, path: Path) -> int | None:
    """``path``'s mode (links followed), None when it does not exist; any other failure is refused by name."""
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise DataError(f"{source}: cannot access {path}: {error.strerror or error}") from None


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "directory", stat.S_ISCHR: "character device", stat.S_ISBLK: "block device",
             stat.S_ISFIFO: "FIFO", stat.S_ISSOCK: "socket", stat.S_ISREG: "regular file"}
    return next((kind for test, kind in kinds.items() if test(mode)), "special file")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches without running code: only numpy array reconstruction is importable.

    A CIFAR batch is a dict of bytes/str keys, lists of ints and one ndarray. Pickle can call any importable
    global, so a hostile file could run ``os.system``; this unpickler resolves only the globals numpy uses to
    rebuild an array (``_reconstruct``/``ndarray``/``dtype`` up to protocol 4, ``_frombuffer`` for protocol 5,
    under both the numpy 1 and numpy 2 module names) and ``_codecs.encode``, which Python 3 uses for bytes in
    protocols 0-2 and which only converts a string.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _SAFE_PICKLE_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return allowed


def _safe_pickle_globals() -> dict[tuple[str, str], Any]:
    """The globals a CIFAR batch may name, resolved from numpy's own pickling (whatever module numpy uses)."""
    reconstruct = np.zeros(1).__reduce__()[0]
    from_buffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = from_buffer
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


_SAFE_PICKLE_GLOBALS = _safe_pickle_globals()


def _read_cifar_batch(path: Path, labels_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) images and int64 labels from one CIFAR python batch file."""
    try:
        with path.open("rb") as file:
            batch = _RestrictedUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DataError(f"{path} is not a readable CIFAR python batch: {error}") from error
    if not isinstance(batch, dict):
        raise DataError(f"{path} must hold a dict, got {type(batch).__name__}")
    # Python 2 pickles read with encoding="bytes" have bytes keys; a file written by Python 3 may have str keys.
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    labels_name = labels_key.decode()
    for key in ("data", labels_name):
        if key not in batch:
            raise DataError(f"{path} lacks the key b{key!r}; keys present: {sorted(map(str, batch))}")
    data = batch["data"]
    pixels = 3 * _CIFAR_SIDE * _CIFAR_SIDE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        description = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be a uint8 (N, {pixels}) array, got {description}")
    labels = _integer_labels(batch[labels_name], f"{path}: b{labels_name!r}")
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    # Each row is the red plane, then green, then blue, each row-major: CHW order.
    return data.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE), labels


def _integer_labels(labels: Any, field: str) -> np.ndarray:
    """CIFAR labels (a list or 1-D array of integers) as int64, range-checked before the cast."""
    if isinstance(labels, list) and all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        try:
            labels = np.asarray(labels, dtype=np.int64)
        except OverflowError:  # a Python int beyond 64 bits: an object array keeps it exact for the range check
            labels = np.asarray(labels, dtype=object)
    elif not (isinstance(labels, np.ndarray) and labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)):
        description = f"{labels.dtype} {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
        raise DataError(f"{field} must be a list or 1-D array of integers, got {description}")
    _check_label_range(labels, field)
    return labels.astype(np.int64).reshape(-1)


def _check_label_range(labels: np.ndarray, field: str) -> None:
    """Labels in [0, MAX_CLASSES), compared in their own dtype: a uint64 label 2**63 + 5 is reported as itself."""
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise DataError(f"{field} must be >= 0, got {low}; relabel the classes as 0..K-1")
    if high >= MAX_CLASSES:
        raise DataError(
            f"{field} must be below {MAX_CLASSES:,} (at most {MAX_CLASSES:,} classes), got {high}; "
            "relabel the classes as 0..K-1"
        )


def _count_classes(labels: np.ndarray, field: str) -> int:
    """K = largest label + 1, for int64 labels in [0, MAX_CLASSES) that must be exactly the set 0..K-1.

    A gap would silently train a head with outputs for classes that never occur ({0, 999} -> 1000 classes).
    """
    counts = np.bincount(labels, minlength=1)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        shown = ", ".join(map(str, missing[:_SHOWN_LABELS].tolist()))
        if missing.size > _SHOWN_LABELS:
            shown += f", ... ({missing.size:,} missing in all)"
        raise DataError(
            f"{field} must be exactly the classes 0..{counts.size - 1} (largest label + 1 = {counts.size:,} "
            f"classes), but labels {shown} do not occur; relabel the classes as 0..K-1"
        )
    return counts.size


# ----------------------------------------------------------------------------------------------- npz


def _load_npz(argument: str, image_size: int | None, seed: int) -> _Loaded:
    file, given = _npz_argument(argument)
    path = _existing_file("npz", file)
    with _open_npz(path) as archive:
        images_header, labels_header = _npz_headers(path, archive, given)
        images = _read_npy(path, archive, images_header)
        labels = _read_npy(path, archive, labels_header).reshape(-1)
    num_classes = _npz_classes(labels, labels_header.field(path))
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return _Loaded(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64), num_classes)


def _check_npz(argument: str, image_size: int | None, files: bool) -> SourceSummary:
    """The npz arrays' headers (and the labels' values when they are small), without reading the images."""
    file, given = _npz_argument(argument)
    if not files:
        return SourceSummary(None, None, None)
    path = _existing_file("npz", file)
    num_classes = None
    with _open_npz(path) as archive:
        images, labels = _npz_headers(path, archive, given)
        if labels.nbytes <= _PREFLIGHT_LABEL_BYTES:
            num_classes = _npz_classes(_read_npy(path, archive, labels).reshape(-1), labels.field(path))
    channels = images.shape[3] if len(images.shape) == 4 else 1
    if image_size is not None:
        _check_dataset_bytes(f"npz:{argument}", images.shape[0], channels, image_size)
    return SourceSummary(images.shape[0], channels, num_classes)


def _npz_argument(argument: str) -> tuple[str, dict[str, str]]:
    """``FILE?images=NAME&labels=NAME`` -> the file and the array names given; syntax only, no file is read.

    The options follow the last ``?``, so a file name holding a ``?`` is written with a trailing one.
    """
    file, separator, query = argument.rpartition("?")
    if not separator:
        return argument, {}
    names: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, equals, value = item.partition("=")
        if key not in NPZ_ARRAYS:
            raise DataError(
                f"unknown npz option {key!r} in 'npz:{argument}'; allowed options: {', '.join(NPZ_ARRAYS)} "
                "(as in 'npz:FILE?images=x_train&labels=y_train')"
            )
        if not equals or not value:
            raise DataError(f"npz option {key} needs an array name, '{key}=NAME', got {item!r}")
        if key in names:
            raise DataError(f"npz option {key} is given twice in 'npz:{argument}'")
        names[key] = value
    return file, names


def _open_npz(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        with path.open("rb") as file:
            if file.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX:
                raise DataError(
                    f"{path} must be an .npz archive with arrays 'images' and 'labels', got a single .npy array"
                ) from None
        raise DataError(f"{path} is not a readable .npz archive of arrays: {error}") from error


@dataclass(frozen=True)
class _NpyHeader:
    """One array of an npz archive as its ``.npy`` header describes it."""

    role: str  # "images" or "labels"
    name: str  # the array's name in the archive
    member: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # bytes of the header before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def field(self, path: Path) -> str:
        """How messages name this array: ``FILE: labels (array 'y_train')``."""
        return f"{path}: {self.role} (array {self.name!r})"


def _npz_headers(path: Path, archive: zipfile.ZipFile, given: dict[str, str]) -> tuple[_NpyHeader, _NpyHeader]:
    """The images' and labels' headers, each checked alone and then against each other, nothing else read."""
    members = {
        info.filename.removesuffix(".npy"): info for info in archive.infolist() if not info.filename.endswith("/")
    }
    names = _npz_array_names(path, list(members), given)
    images, labels = (_npy_header(path, archive, members[names[role]], role, names[role]) for role in NPZ_ARRAYS)
    if not (len(images.shape) == 3 or (len(images.shape) == 4 and images.shape[3] in (1, 3))):
        raise DataError(
            f"{images.field(path)} must be NHWC with 1 or 3 channels, or NHW, got shape {images.shape}"
        )
    if images.shape[1] != images.shape[2]:
        raise DataError(
            f"{images.field(path)} must be square, got height {images.shape[1]} and width {images.shape[2]}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{images.field(path)} holds no images")
    if not (len(labels.shape) == 1 or (len(labels.shape) == 2 and labels.shape[1] == 1)):
        raise DataError(f"{labels.field(path)} must have shape (N,) or (N, 1), got {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{path}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def _npz_array_names(path: Path, available: list[str], given: dict[str, str]) -> dict[str, str]:
    """Role -> array name: the names given, the rest from the first convention whose arrays are all present."""
    absent = [f"{role}={name}" for role, name in given.items() if name not in available]
    if absent:
        raise DataError(f"{path} has no array named as in {', '.join(absent)}; arrays present: {sorted(available)}")
    for convention in NPZ_CONVENTIONS:
        names = {**dict(zip(NPZ_ARRAYS, convention)), **given}
        if all(name in available for name in names.values()):
            return names
    raise DataError(
        f"{path} has neither arrays 'images' and 'labels' nor Keras-style 'x_train' and 'y_train'; arrays "
        f"present: {sorted(available)}; name them as in 'npz:{path}?images=NAME&labels=NAME'"
    )


def _npy_header(path: Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo, role: str, name: str) -> _NpyHeader:
    """Reads and checks one array's header: dtype for its role, size within the budget and agreeing with the
    archive's declared size, so a forged header (10^9 images) or a decompression bomb is refused before any
    allocation or inflation beyond the header itself."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with archive.open(member) as file:
            version = np.lib.format.read_magic(file)
            if version not in readers:
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported (only 1.0, 2.0)")
            shape, fortran_order, dtype = readers[version](file)
            header = _NpyHeader(role, name, member, shape, dtype, fortran_order, file.tell())
    except (OSError, ValueError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: array {name!r} is not a readable .npy array: {error}") from error
    _check_npy_header(path, header)
    return header


def _check_npy_header(path: Path, header: _NpyHeader) -> None:
    field = header.field(path)
    if header.role == "images" and header.dtype != np.uint8:
        raise DataError(f"{field} must be uint8, got {header.dtype}; store pixel values 0..255 as uint8")
    if header.role == "labels" and header.dtype.kind not in "iu":
        raise DataError(f"{field} must be integers, got {header.dtype}; store class indices 0..K-1 as integers")
    if any(side < 0 for side in header.shape):
        raise DataError(f"{field}: its .npy header declares a negative shape {header.shape}; the file is damaged")
    if header.nbytes > MAX_DATASET_BYTES:
        raise DataError(
            f"{field} of shape {header.shape} and dtype {header.dtype} is {header.nbytes / 2**30:,.1f} GiB; the "
            f"limit is {MAX_DATASET_BYTES / 2**30:.0f} GiB (fewer or smaller images)"
        )
    if header.offset + header.nbytes != header.member.file_size:
        raise DataError(
            f"{field}: its .npy header declares {header.offset + header.nbytes:,} bytes but the archive member "
            f"holds {header.member.file_size:,}; the file is damaged or forged: write it again with numpy.savez"
        )


def _read_npy(path: Path, archive: zipfile.ZipFile, header: _NpyHeader) -> np.ndarray:
    """The array's data, inflated straight into one buffer of the checked size: never a byte past it."""
    buffer = np.empty(header.nbytes, dtype=np.uint8)
    view = memoryview(buffer)
    try:
        with archive.open(header.member) as file:
            file.read(header.offset)
            filled = 0
            while filled < header.nbytes:
                count = file.readinto(view[filled : filled + _NPZ_READ_CHUNK])
                if not count:
                    raise EOFError(f"the data ends after {filled:,} of {header.nbytes:,} bytes")
                filled += count
    except (OSError, ValueError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{header.field(path)}: cannot read its data: {error}") from error
    if header.fortran_order:
        return buffer.view(header.dtype).reshape(header.shape[::-1]).transpose()
    return buffer.view(header.dtype).reshape(header.shape)


def _npz_classes(labels: np.ndarray, field: str) -> int:
    """The number of classes of an npz labels array: its values must be exactly 0..K-1, K <= MAX_CLASSES."""
    _check_label_range(labels, field)
    return _count_classes(labels.astype(np.int64), field)


# ----------------------------------------------------------------------------------------------- imagefolder


def _load_imagefolder(argument: str, image_size: int | None, seed: int) -> _Loaded:
    directory = _existing_directory("imagefolder", argument)
    size = image_size or DEFAULT_IMAGEFOLDER_SIZE
    classes, files = _list_image_folder(directory)
    _check_dataset_bytes(f"imagefolder:{argument}", len(files), 3, size)
    fingerprint = hashlib.sha256(
        json.dumps([[path.relative_to(directory).as_posix(), *_file_signature(path)] for path, _ in files]).encode()
    ).hexdigest()
    cache = _FolderCache(directory / CACHE_DIRNAME, fingerprint, size)
    cached = cache.read(len(files), classes)
    if cached is not None:
        return _Loaded(*cached, len(classes))
    with warnings.catch_warnings():
        # Pillow only warns for an image between its pixel limit and twice that (it raises beyond): refuse those
        # too. Warning filters are process-wide, so the decoding threads below see this one.
        warnings.simplefilter("error", _pillow().DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as executor:  # Pillow releases the GIL
            images = np.stack(list(executor.map(lambda item: _decode_image(item[0], size), files)))
    labels = np.asarray([label for _, label in files], dtype=np.int64)
    cache.write(images, labels, classes)
    return _Loaded(images, labels, len(classes))


def _check_imagefolder(argument: str, image_size: int | None, files: bool) -> SourceSummary:
    """Class folders and image files counted, no image opened: decoding is the loader's (cached) work."""
    if not files:
        return SourceSummary(None, 3, None)
    classes, images = _list_image_folder(_existing_directory("imagefolder", argument))
    _check_dataset_bytes(f"imagefolder:{argument}", len(images), 3, image_size or DEFAULT_IMAGEFOLDER_SIZE)
    return SourceSummary(len(images), 3, len(classes))


def _list_image_folder(directory: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted subfolders) and (image path, class index) pairs, files sorted within each class."""
    classes = sorted(entry.name for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(f"imagefolder: {directory} has no class subfolders (expected DIR/<class_name>/<images>)")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"imagefolder: {directory} has {len(classes):,} class folders; at most {MAX_CLASSES:,}")
    files = []
    for label, name in enumerate(classes):
        class_files = sorted(
            path
            for path in (directory / name).rglob("*")
            if path.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in path.relative_to(directory).parts)
            and path.is_file()
        )
        if not class_files:
            raise DataError(
                f"imagefolder: class folder {directory / name} holds no images with extensions {IMAGE_EXTENSIONS}"
            )
        files.extend((path, label) for path in class_files)
    return classes, files


def _file_signature(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def _pillow() -> Any:
    """Pillow's Image module, imported only by the source that needs it."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("the imagefolder source needs Pillow: pip install pillow") from error
    return Image


def _decode_image(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 (3, size, size): RGB, shorter side scaled to ``size``, center cropped.

    A file that claims more pixels than Pillow's decompression-bomb limit, or does not decode, is refused by name.
    """
    Image = _pillow()
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size
            image = image.convert("RGB")
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) / 2, (height - side) / 2
            # Resizing the centered square box equals scaling the shorter side to `size`, then center cropping.
            image = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"imagefolder: image {path} is too large to decode safely ({error}); remove it") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as error:
        raise DataError(f"imagefolder: cannot read image {path}: {error}; remove or replace it") from error


class _FolderCache:
    """The decoded images of an image folder at one size, as .npy files in ``DIR/.nas-cache``.

    ``classes.json`` holds the fingerprint of the file list (relative paths, sizes, modification times), the
    class names and the image sizes cached for that fingerprint; it is written last, so a cache interrupted
    mid-write is never trusted. A folder that cannot be written is simply not cached.
    """

    def __init__(self, directory: Path, fingerprint: str, image_size: int):
        self.directory = directory
        self.fingerprint = fingerprint
        self.image_size = image_size
        self.images_path = directory / f"images_{image_size}.npy"
        self.labels_path = directory / f"labels_{image_size}.npy"
        self.index_path = directory / "classes.json"

    def _cached_sizes(self, classes: list[str]) -> list[int] | None:
        """The image sizes cached for this file list and these classes; None when the index is absent or stale."""
        try:
            index = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            return None
        if (
            not isinstance(index, dict)
            or index.get("fingerprint") != self.fingerprint
            or index.get("classes") != classes
            or not isinstance(index.get("image_sizes"), list)
        ):
            return None
        return [size for size in index["image_sizes"] if isinstance(size, int)]

    def read(self, count: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached images and labels, or None when absent, stale or damaged."""
        sizes = self._cached_sizes(classes)
        if sizes is None or self.image_size not in sizes:
            return None
        try:
            images = np.load(self.images_path, allow_pickle=False)
            labels = np.load(self.labels_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if (
            images.dtype != np.uint8
            or images.shape != (count, 3, self.image_size, self.image_size)
            or labels.dtype != np.int64
            or labels.shape != (count,)
        ):
            return None
        return images, labels

    def write(self, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
        """Stores the arrays (atomically, file by file), then the index; gives up silently if not writable."""
        sizes = self._cached_sizes(classes)
        try:
            self.directory.mkdir(exist_ok=True)
            if sizes is None:  # arrays already there were built from another file list
                for path in [*self.directory.glob("images_*.npy"), *self.directory.glob("labels_*.npy")]:
                    path.unlink()
            # Through the project's one safe writer: a unique O_EXCL|O_NOFOLLOW temporary file, fsync, rename.
            write_file(self.images_path, lambda file: np.save(file, images, allow_pickle=False))
            write_file(self.labels_path, lambda file: np.save(file, labels, allow_pickle=False))
            index = {
                "fingerprint": self.fingerprint,
                "classes": classes,
                "image_sizes": sorted({*(sizes or []), self.image_size}),
            }
            write_file(self.index_path, json.dumps(index, indent=1))
        except OSError:
            return  # a read-only folder is used without a cache


class _Source(NamedTuple):
    """A data source: its loader and its cheap pre-flight check."""

    load: Callable[[str, int | None, int], _Loaded]  # (argument, image_size, seed)
    check: Callable[[str, int | None, bool], SourceSummary]  # (argument, image_size, files)


_SOURCES: dict[str, _Source] = {
    "synthetic": _Source(_load_synthetic, _check_synthetic),
    "cifar10": _Source(_load_cifar10, _check_cifar10),
    "cifar100": _Source(_load_cifar100, _check_cifar100),
    "npz": _Source(_load_npz, _check_npz),
    "imagefolder": _Source(_load_imagefolder, _check_imagefolder),
}


# ----------------------------------------------------------------------------------------------- batches


class DeviceBatches:
    """Mini-batches cut from uint8 tensors that already live on the training device, augmented there per batch.

    Each ``__iter__`` is a new epoch: a permutation (``shuffle``) and the augmentation parameters of every
    sample are drawn at once from a ``torch.Generator`` on the images' device, seeded from ``seed`` and the
    epoch number, so two instances with the same seed yield identical batches and epochs differ. A batch costs a
    few kernels and no host synchronization:

    - ``crop_flip`` (the CIFAR standard): translation by up to ``crop_padding`` pixels with zero padding (one
      gather from the windows of the padded batch) and a random horizontal flip (one select), on uint8.
    - ``resized_crop_flip``: random-resized crop (area scale in (0.35, 1), log-uniform aspect ratio in
      (3/4, 4/3)) and flip, as one ``affine_grid`` + ``grid_sample`` over the batch.
    - ``none``: normalization only, for evaluation (use ``shuffle=False, drop_last=False``).

    With ``randaugment_magnitude > 0``, RandAugment (``randaugment_ops`` ops per image, :mod:`nas.augment`) follows
    the crop. Batches are float32 ``(x / 255 - mean) / std``, in channels_last memory format when
    ``channels_last``, at ``image_size`` (resized on the device when it differs from the stored size), with their
    int64 labels. ``image_size`` and the RandAugment settings may change between epochs (progressive learning).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "crop_flip",
        image_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        channels_last: bool = True,
        seed: int = 0,
        crop_padding: int = 4,
        randaugment_magnitude: float = 0.0,
        randaugment_ops: int = 2,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be a uint8 (N, C, S, S) tensor, got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("images must hold at least one image, got 0")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels must be an int64 ({images.shape[0]},) tensor, got {labels.dtype} {tuple(labels.shape)}"
            )
        if labels.device != images.device:
            raise ValueError(f"labels must be on the images' device {images.device}, got {labels.device}")
        _check_positive_int("batch_size", batch_size, ValueError)
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        if image_size is not None:
            _check_positive_int("image_size", image_size, ValueError)
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"crop_padding must be a non-negative integer, got {crop_padding!r}")
        _check_seed(seed, ValueError)
        if not 0 <= randaugment_magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"randaugment_magnitude must be in [0, {MAX_MAGNITUDE:g}], got {randaugment_magnitude!r}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std must have {channels} values (one per channel), got {mean} and {std}")
        if not all(value > 0 for value in std):
            raise ValueError(f"std must be positive, got {std}")

        self.images = images.contiguous()
        self.labels = labels
        self.batch_size = batch_size
        self.augment = augment
        self.stored_size = images.shape[-1]
        self.image_size = image_size or self.stored_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.seed = seed
        self.crop_padding = crop_padding
        # Progressive learning changes these (and image_size) between epochs.
        self.randaugment_magnitude = randaugment_magnitude
        self.randaugment_ops = randaugment_ops
        self._epoch = 0
        device = images.device
        self._generator = torch.Generator(device=device)
        std_tensor = torch.tensor(std, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        mean_tensor = torch.tensor(mean, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift: two in-place passes over the float batch.
        self._scale = 1 / (255 * std_tensor)
        self._shift = -mean_tensor / std_tensor
        self._batch_positions = torch.arange(batch_size, device=device)
        # Crop offsets and flip are drawn as uniform numbers scaled to these counts of choices.
        self._crop_choices = torch.tensor([2 * crop_padding + 1, 2 * crop_padding + 1, 2], device=device)

    def state_dict(self) -> dict[str, int]:
        """Where the batch stream is: epochs are seeded from (seed, epoch), so the epoch count is all a resumed
        run needs to draw the same batches."""
        return {"epoch": self._epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._epoch = int(state["epoch"])

    def __len__(self) -> int:
        """Batches per epoch."""
        count = self.images.shape[0]
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._generator.manual_seed(_derived_seed(self.seed, 2, self._epoch))
        self._epoch += 1
        count, device = self.images.shape[0], self.images.device
        order = torch.randperm(count, generator=self._generator, device=device) if self.shuffle else None
        parameters = self._draw_parameters(count)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(start + self.batch_size, count)
            if order is None:
                images, labels = self.images[start:stop], self.labels[start:stop]
            else:
                index = order[start:stop]
                # index_select, not images[index]: on CPU it is a row copy, ~50x faster for uint8.
                images, labels = self.images.index_select(0, index), self.labels.index_select(0, index)
            yield self._transform(images, parameters[start:stop] if parameters is not None else None), labels

    def _draw_parameters(self, count: int) -> torch.Tensor | None:
        """Per-sample augmentation parameters of one epoch, drawn with one generator call."""
        device = self.images.device
        if self.augment == "crop_flip":
            # Columns: vertical offset, horizontal offset (each in [0, 2 * padding]), flip (0 or 1).
            return (torch.rand((count, 3), generator=self._generator, device=device) * self._crop_choices).long()
        if self.augment == "resized_crop_flip":
            # Columns: area scale, log aspect ratio, horizontal centre, vertical centre, flip, each uniform in [0, 1).
            return torch.rand((count, 5), generator=self._generator, device=device)
        return None

    def _transform(self, images: torch.Tensor, parameters: torch.Tensor | None) -> torch.Tensor:
        """uint8 (B, C, S, S) -> augmented, normalized float32 (B, C, image_size, image_size).

        Normalization runs in NCHW and the layout changes last: on CPU a channels_last multiply-add broadcasts
        over an innermost dimension of C = 3 and is several times slower than this order.
        """
        if self.augment == "crop_flip":
            images = self._crop_flip(images, parameters)
        images = images.to(torch.float32)
        if self.augment == "resized_crop_flip":
            images = self._resized_crop_flip(images, parameters)
        if self.randaugment_magnitude > 0:
            images = rand_augment(
                images.div_(255.0), num_ops=self.randaugment_ops, magnitude=self.randaugment_magnitude,
                generator=self._generator,
            ).mul_(255.0)
        images = images.mul_(self._scale).add_(self._shift)
        if images.shape[-1] != self.image_size:
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )
        return images.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def _crop_flip(self, images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        """Translation crop with zero padding, then horizontal flip: uint8 in, uint8 out.

        The crop is one gather from a view of every window of the padded batch, indexed by B sample/offset
        triples, so no per-element index tensor is built (it would be 8x the batch at int64).
        """
        padding, side = self.crop_padding, images.shape[-1]
        padded = F.pad(images, (padding, padding, padding, padding))
        windows = padded.unfold(2, side, 1).unfold(3, side, 1)  # (B, C, 2p + 1, 2p + 1, S, S), a view
        crops = windows[self._batch_positions[: images.shape[0]], :, parameters[:, 0], parameters[:, 1]]  # (B, C, S, S)
        return torch.where(parameters[:, 2].view(-1, 1, 1, 1).bool(), crops.flip(-1), crops)

    def _resized_crop_flip(self, images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        """Random-resized crop and flip of float images by one affine resampling, straight to the output size."""
        scale = 0.35 + 0.65 * parameters[:, 0]
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * parameters[:, 1]
        # Crop width and height as fractions of the side; clamped so the crop stays inside the image.
        width = (scale * log_ratio.exp()).sqrt().clamp(max=1)
        height = (scale / log_ratio.exp()).sqrt().clamp(max=1)
        centre_x = (1 - width) * (2 * parameters[:, 2] - 1)  # in grid_sample's [-1, 1] coordinates
        centre_y = (1 - height) * (2 * parameters[:, 3] - 1)
        sign = 1 - 2 * (parameters[:, 4] < 0.5).to(images.dtype)
        zeros = torch.zeros_like(width)
        theta = torch.stack(
            [torch.stack([width * sign, zeros, centre_x], dim=1), torch.stack([zeros, height, centre_y], dim=1)], dim=1
        )  # (B, 2, 3): output coordinates -> input coordinates
        size = (images.shape[0], images.shape[1], self.image_size, self.image_size)
        grid = F.affine_grid(theta, size, align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
