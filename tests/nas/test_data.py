"""Loading data sources into tensors, the hold-out split and on-device batches (nas/data.py).

Most source errors are raised by nas/sources.py; they are tested here through load_data (and check_source where
both must agree), and tests/nas/test_sources.py holds those of check_source alone."""

import io
import os
import pickle
import re
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import nas.data
import nas.sources
from nas.data import CACHE_DIRNAME, DeviceBatches, ImageData, load_data
from nas.recipe import AUGMENTATIONS
from nas.sources import (
    MAX_CLASSES,
    SOURCE_NAMES,
    DataError,
    SourceSummary,
    check_source,
)

SMALL_SYNTHETIC = "synthetic:num_classes=4,num_images=200,image_size=16"


def all_images_and_labels(data: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([data.train_images, data.val_images]), torch.cat([data.train_labels, data.val_labels])


def denormalize(batch: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalized float batch -> pixel values in [0, 255] units."""
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return (batch * std + mean) * 255


# ----------------------------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_dtypes():
    data = load_data(SMALL_SYNTHETIC)
    assert data.name == SMALL_SYNTHETIC
    assert data.train_images.shape == (180, 3, 16, 16) and data.val_images.shape == (20, 3, 16, 16)
    assert data.train_images.dtype == data.val_images.dtype == torch.uint8
    assert data.train_labels.dtype == data.val_labels.dtype == torch.int64
    assert data.train_images.is_contiguous() and data.val_images.is_contiguous()
    assert (data.num_classes, data.image_size, data.in_channels) == (4, 16, 3)
    assert repr(data) == (
        f"ImageData(name={SMALL_SYNTHETIC!r}, train=(180, 3, 16, 16), val=(20, 3, 16, 16), num_classes=4, device=cpu)"
    )


def test_synthetic_defaults():
    data = load_data("synthetic")
    assert data.train_images.shape[0] + data.val_images.shape[0] == 10000
    assert (data.num_classes, data.image_size, data.in_channels) == (10, 32, 3)


def test_synthetic_is_determined_by_the_seed():
    first, again, other = (load_data(SMALL_SYNTHETIC, seed=seed) for seed in (3, 3, 4))
    assert torch.equal(first.train_images, again.train_images) and torch.equal(first.val_images, again.val_images)
    assert torch.equal(first.train_labels, again.train_labels)
    assert not torch.equal(first.train_images, other.train_images)


def test_synthetic_classes_are_balanced():
    _, labels = all_images_and_labels(load_data("synthetic:num_classes=7,num_images=700,image_size=8"))
    assert torch.bincount(labels).tolist() == [100] * 7


def test_synthetic_images_of_a_class_resemble_each_other_more_than_other_classes():
    images, labels = all_images_and_labels(load_data("synthetic:num_classes=3,num_images=600,image_size=16"))
    class_means = torch.stack([images[labels == label].float().mean(0) for label in range(3)])
    distances = torch.cdist(images.float().flatten(1), class_means.flatten(1))  # (N, classes)
    assert (distances.argmin(1) == labels).float().mean() > 0.5  # chance is 1/3


def test_mean_and_std_are_the_training_split_statistics():
    data = load_data(SMALL_SYNTHETIC)
    pixels = data.train_images.double().div(255).transpose(0, 1).flatten(1)  # (C, N * H * W)
    assert data.mean == pytest.approx(pixels.mean(1).tolist(), abs=1e-9)
    assert data.std == pytest.approx(pixels.std(1, correction=0).tolist(), abs=1e-9)
    assert all(0 < value < 1 for value in (*data.mean, *data.std))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("synthetic:colours=3", "allowed options: num_classes, num_images, image_size"),
        ("synthetic:num_classes", "num_classes must be a positive integer"),
        ("synthetic:num_images=-5", "num_images must be a positive integer"),
        ("synthetic:num_images=5,num_images=6", "given twice"),
        ("synthetic:num_classes=1", "num_classes must be an integer >= 2"),
    ],
)
def test_synthetic_option_errors(source, message):
    with pytest.raises(DataError, match=message):
        load_data(source)


def test_synthetic_draws_directly_at_the_requested_size():
    assert load_data("synthetic:num_images=50", image_size=12).image_size == 12
    assert torch.equal(
        load_data("synthetic:num_images=50,image_size=12").train_images,
        load_data("synthetic:num_images=50", image_size=12).train_images,
    )


# ----------------------------------------------------------------------------------------------- sources


def test_every_source_that_nas_sources_checks_has_a_loader():
    assert tuple(nas.data._LOADERS) == SOURCE_NAMES


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("mnist:/tmp", "unknown data source 'mnist'.*allowed sources: synthetic, cifar10, cifar100, npz, imagefolder"),
        ("cifar10", r"cifar10 needs a directory: 'cifar10:DIR'"),
        ("npz", r"npz needs a file"),
        ("cifar100:/no/such/dir", "directory /no/such/dir does not exist"),
        ("imagefolder:/no/such/dir", "directory /no/such/dir does not exist"),
        ("npz:/no/such/file.npz", "file /no/such/file.npz does not exist"),
    ],
)
def test_source_errors(source, message):
    with pytest.raises(DataError, match=message):
        load_data(source)


@pytest.mark.parametrize("val_fraction", [0, 0.0, 0.51, -0.1, 1, True, float("nan"), "0.1"])
def test_val_fraction_must_be_in_range(val_fraction):
    with pytest.raises(DataError, match=r"val_fraction must be a number in \(0, 0.5\]"):
        load_data(SMALL_SYNTHETIC, val_fraction=val_fraction)


@pytest.mark.parametrize(("keyword", "value", "message"), [
    ("image_size", 0, "image_size must be an integer >= 1 or None, got 0"),
    ("image_size", 1.5, "image_size must be an integer >= 1 or None, got 1.5"),
    ("seed", -1, "seed must be an integer >= 0, got -1"),
    ("seed", "0", "seed must be an integer >= 0, got '0'"),
])
def test_load_keyword_errors(keyword, value, message):
    with pytest.raises(DataError, match=re.escape(message)):
        load_data(SMALL_SYNTHETIC, **{keyword: value})


# ----------------------------------------------------------------------------------------------- CIFAR


def cifar_rows(indices: range) -> np.ndarray:
    """CIFAR rows (N, 3072) that are zero except green (row 3, column 5) = 77 and red (0, 0) = blue (31, 31) = the
    image's index (so no channel is constant)."""
    rows = np.zeros((len(indices), 3072), dtype=np.uint8)
    rows[:, 1 * 1024 + 3 * 32 + 5] = 77
    rows[:, 0] = rows[:, 3071] = np.asarray(indices)
    return rows


def write_pickle(path, content, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=protocol)


def write_cifar10(directory, batches=2, per_batch=30, protocol=pickle.DEFAULT_PROTOCOL):
    directory.mkdir(exist_ok=True)
    for batch in range(batches):
        indices = range(batch * per_batch, (batch + 1) * per_batch)
        content = {b"batch_label": b"training batch", b"labels": [index % 10 for index in indices],
                   b"data": cifar_rows(indices), b"filenames": [b"x.png"] * per_batch}
        write_pickle(directory / f"data_batch_{batch + 1}", content, protocol)
    write_pickle(directory / "batches.meta", {b"label_names": [b"class"] * 10, b"num_vis": 3072})
    (directory / "test_batch").write_bytes(b"not a pickle: reading the test batch fails")
    return directory


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_decodes_rows_in_chw_order(tmp_path, protocol):
    data = load_data(f"cifar10:{write_cifar10(tmp_path / 'cifar', protocol=protocol)}")
    images, labels = all_images_and_labels(data)
    assert images.shape == (60, 3, 32, 32) and data.num_classes == 10
    order = images[:, 0, 0, 0].long().argsort()
    images, labels = images[order], labels[order]
    assert images[:, 0, 0, 0].tolist() == list(range(60))  # every image of both batches, none of test_batch
    assert labels.tolist() == [index % 10 for index in range(60)]
    assert (images[:, 1, 3, 5] == 77).all() and images[:, 2, 31, 31].tolist() == list(range(60))
    assert int(images.long().sum()) == 77 * 60 + 2 * sum(range(60))  # nothing else is set


def test_cifar10_uses_the_batches_present(tmp_path):
    directory = write_cifar10(tmp_path, batches=3, per_batch=10)
    (directory / "data_batch_2").unlink()
    images, _ = all_images_and_labels(load_data(f"cifar10:{directory}"))
    assert sorted(images[:, 0, 0, 0].tolist()) == [*range(10), *range(20, 30)]


def test_cifar10_without_batches_is_refused(tmp_path):
    (tmp_path / "test_batch").write_bytes(b"")
    with pytest.raises(DataError, match=f"no data_batch_\\* files in {tmp_path}"):
        load_data(f"cifar10:{tmp_path}")


def test_cifar100_reads_train_with_fine_labels(tmp_path):
    labels = [index * 7 % 100 for index in range(50)]
    content = {b"data": cifar_rows(range(50)), b"fine_labels": labels, b"coarse_labels": [0] * 50}
    write_pickle(tmp_path / "train", content)
    (tmp_path / "test").write_bytes(b"not a pickle: reading the test file fails")
    data = load_data(f"cifar100:{tmp_path}")
    images, loaded_labels = all_images_and_labels(data)
    assert data.num_classes == 100
    assert loaded_labels[images[:, 0, 0, 0].long().argsort()].tolist() == labels


class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    write_pickle(tmp_path / "data_batch_1", {b"data": RunsAShellCommand(marker), b"labels": [0]})
    with pytest.raises(DataError, match=r"data_batch_1 is not a readable CIFAR python batch.*system is not allowed"):
        load_data(f"cifar10:{tmp_path}")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2, 3], "must hold a dict, got list"),
        ({b"data": cifar_rows(range(4))}, "lacks the key b'labels'"),
        ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, r"uint8 \(N, 3072\) array, got float32"),
        ({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}, r"\(N, 3072\) array, got uint8 \(4, 1024\)"),
        ({b"data": cifar_rows(range(4)), b"labels": [0] * 3}, "4 images but 3 labels"),
        ({b"data": cifar_rows(range(4)), b"labels": ["a"] * 4}, "b'labels' must be a list or 1-D array of integers"),
        ({b"data": cifar_rows(range(4)), b"labels": [0, 1, True, 0]},
         "b'labels' must be a list or 1-D array of integers, got list"),
        ({b"data": cifar_rows(range(4)), b"labels": [0, 1, 2, 10]}, r"labels must be in \[0, 10\)"),
    ],
)
def test_malformed_cifar_batches_are_refused(tmp_path, content, message):
    write_pickle(tmp_path / "data_batch_1", content)
    with pytest.raises(DataError, match=message):
        load_data(f"cifar10:{tmp_path}")


def test_a_truncated_cifar_batch_is_refused(tmp_path):
    write_cifar10(tmp_path, batches=1)
    (tmp_path / "data_batch_1").write_bytes((tmp_path / "data_batch_1").read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_1 is not a readable CIFAR python batch"):
        load_data(f"cifar10:{tmp_path}")


# ----------------------------------------------------------------------------------------------- npz


def test_npz_nhwc_becomes_nchw(tmp_path):
    images = np.zeros((10, 8, 8, 3), dtype=np.uint8)
    images[:, 2, 5, 1] = 99  # row 2, column 5, green
    images[:, 0, 0, 0] = images[:, 7, 7, 2] = np.arange(10)
    np.savez(tmp_path / "data.npz", images=images, labels=np.arange(10) % 4)
    data = load_data(f"npz:{tmp_path / 'data.npz'}")
    loaded, labels = all_images_and_labels(data)
    assert loaded.shape == (10, 3, 8, 8) and data.num_classes == 4
    assert (loaded[:, 1, 2, 5] == 99).all()
    assert labels.tolist() == (loaded[:, 0, 0, 0].long() % 4).tolist()


def test_npz_grayscale_has_one_channel(tmp_path):
    images = np.arange(6 * 5 * 5, dtype=np.uint8).reshape(6, 5, 5)
    np.savez(tmp_path / "gray.npz", images=images, labels=np.array([0, 1, 2, 0, 1, 2]))
    data = load_data(f"npz:{tmp_path / 'gray.npz'}")
    assert (data.in_channels, data.image_size, data.num_classes) == (1, 5, 3)
    assert len(data.mean) == len(data.std) == 1


ZEROS = np.zeros(4, int)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((4, 8, 8, 3), np.float32), "labels": ZEROS},
         r"images \(array 'images'\) must be uint8, got float32; store pixel values 0..255 as uint8"),
        ({"images": np.zeros((4, 8, 8, 2), np.uint8), "labels": ZEROS}, r"1 or 3 channels.*\(4, 8, 8, 2\)"),
        ({"images": np.zeros((4, 3, 8, 8), np.uint8), "labels": ZEROS}, r"1 or 3 channels.*\(4, 3, 8, 8\)"),
        ({"images": np.zeros((4, 8, 6, 3), np.uint8), "labels": ZEROS}, "must be square, got height 8 and width 6"),
        ({"images": np.zeros((4, 8, 8), np.uint8), "labels": np.zeros(3, int)}, "4 images but 3 labels"),
        ({"images": np.zeros((4, 8, 8), np.uint8), "labels": np.array([0, 1, -1, 2])},
         r"labels \(array 'labels'\) must be >= 0, got -1; relabel"),
        ({"images": np.zeros((4, 8, 8), np.uint8), "labels": np.zeros(4, np.float32)},
         r"labels \(array 'labels'\) must be integers, got float32"),
        ({"images": np.zeros((4, 8, 8), np.uint8), "labels": np.zeros((4, 2), int)}, r"\(N,\) or \(N, 1\)"),
        ({"images": np.zeros((0, 8, 8), np.uint8), "labels": np.zeros(0, int)}, "holds no images"),
        ({"pictures": np.zeros((4, 8, 8), np.uint8), "labels": ZEROS},
         (r"neither arrays 'images' and 'labels' nor Keras-style 'x_train' and 'y_train'; arrays present: "
          r"\['labels', 'pictures'\]; name them as in 'npz:.*bad.npz\?images=NAME&labels=NAME'")),
        ({"images": np.zeros((1, 8, 8), np.uint8), "labels": np.zeros(1, int)},  # one image is one class
         r"bad.npz: labels \(array 'labels'\): found 1 class \(label 0\); at least 2 are needed"),
    ],
)
def test_malformed_npz_is_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_data(f"npz:{tmp_path / 'bad.npz'}")


def test_a_file_that_is_not_npz_is_refused(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match="text.npz is not a readable .npz archive"):
        load_data(f"npz:{tmp_path / 'text.npz'}")
    np.save(tmp_path / "single.npy", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(DataError, match="single.npy must be an .npz archive with arrays 'images' and 'labels'"):
        load_data(f"npz:{tmp_path / 'single.npy'}")
    np.savez_compressed(tmp_path / "whole.npz", images=np.zeros((40, 8, 8), np.uint8), labels=np.zeros(40, int))
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:300])
    with pytest.raises(DataError, match="truncated.npz is not a readable .npz archive"):
        load_data(f"npz:{tmp_path / 'truncated.npz'}")


def test_resize_at_load_gives_the_requested_size(tmp_path):
    images = np.broadcast_to(np.arange(90, 98, dtype=np.uint8).reshape(8, 1, 1, 1), (8, 16, 16, 3))
    np.savez(tmp_path / "data.npz", images=images, labels=np.arange(8) % 2)
    for size in (8, 24):
        data = load_data(f"npz:{tmp_path / 'data.npz'}", image_size=size)
        assert data.train_images.shape[1:] == (3, size, size) and data.val_images.shape[1:] == (3, size, size)
        assert (data.train_images == data.train_images[:, :1, :1, :1]).all()  # a constant image stays constant
    assert load_data("synthetic:num_images=20,image_size=32", image_size=16).image_size == 16


def npy_bytes(shape, descr="|u1", data=b"") -> bytes:
    """A .npy file whose header declares ``shape`` and ``descr``, followed by ``data`` whatever the header says."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def write_zip(path, members: dict, compression=zipfile.ZIP_STORED):
    """An npz made by hand: member name -> bytes (an .npy file, or anything)."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def varied_images(count, size=4, channels=None):
    """uint8 NHW (or NHWC) images in which no channel is constant."""
    shape = (count, size, size) if channels is None else (count, size, size, channels)
    return (np.arange(np.prod(shape)) % 251).astype(np.uint8).reshape(shape)


def small_labels(count):
    return np.arange(count) % 2


def test_a_header_claiming_a_billion_images_is_refused_instantly_without_allocating(tmp_path):
    path = write_zip(tmp_path / "forged.npz", {"images.npy": npy_bytes((10**9, 28, 28)),
                                                "labels.npy": npy_bytes((10**9,), "<i8")})
    for check in (lambda: check_source(f"npz:{path}"), lambda: load_data(f"npz:{path}")):
        tracemalloc.start()
        started = time.perf_counter()
        try:
            with pytest.raises(DataError, match=r"forged.npz: images \(array 'images'\) of shape \(1000000000, 28, 28\) "
                                                r"and dtype uint8 is 730.2 GiB; the limit is 64 GiB"):
                check()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20 and time.perf_counter() - started < 2


def test_a_header_that_disagrees_with_the_archive_is_refused(tmp_path):
    path = write_zip(tmp_path / "forged.npz", {"images.npy": npy_bytes((1000, 8, 8), data=b"\1" * 100),
                                                "labels.npy": npy_bytes((1000,), "<i8")})
    with pytest.raises(DataError, match=r"forged.npz: images \(array 'images'\): its .npy header declares 64,128 "
                                        r"bytes but the archive member holds 228; the file is damaged or forged"):
        check_source(f"npz:{path}")


def test_an_npz_that_inflates_beyond_the_budget_is_refused_without_inflating(tmp_path, monkeypatch):
    # 16 MiB of zeros deflate to ~16 KiB: the same shape as a 1.2 MB file that inflates to 1.2 GB.
    np.savez_compressed(tmp_path / "bomb.npz", images=np.zeros((1 << 14, 32, 32), np.uint8),
                        labels=np.zeros(1 << 14, np.uint8))
    assert (tmp_path / "bomb.npz").stat().st_size < 100_000
    monkeypatch.setattr(nas.sources, "MAX_DATASET_BYTES", 4 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"bomb.npz: images \(array 'images'\) of shape \(16384, 32, 32\) and "
                                            r"dtype uint8 is 0.0 GiB; the limit is 0 GiB"):
            load_data(f"npz:{tmp_path / 'bomb.npz'}")
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_decompression_stops_at_the_declared_size(tmp_path, monkeypatch):
    """The images are read in chunks into a buffer of the header's size; a stream that ends early is named."""
    monkeypatch.setattr(nas.sources, "_NPZ_READ_CHUNK", 7)
    images = varied_images(10)
    np.savez_compressed(tmp_path / "data.npz", images=images, labels=small_labels(10))
    data = load_data(f"npz:{tmp_path / 'data.npz'}", val_fraction=0.5)
    assert sorted(torch.cat([data.train_images, data.val_images])[:, 0, 0, 0].tolist()) == images[:, 0, 0].tolist()
    content = bytearray((tmp_path / "data.npz").read_bytes())
    position = content.index(b"images.npy") + len("images.npy")  # the deflated data after the local header
    content[position + 40 : position + 60] = bytes(20)
    (tmp_path / "damaged.npz").write_bytes(bytes(content))
    with pytest.raises(DataError, match=r"damaged.npz: .*array 'images'.*(Bad CRC-32|Error -3)"):
        load_data(f"npz:{tmp_path / 'damaged.npz'}")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"images.npy": npy_bytes((2, 4, 4), "<u2", bytes(64)), "labels.npy": npy_bytes((2,), "<i8", bytes(16))},
         r"images \(array 'images'\) must be uint8, got uint16"),
        ({"images.npy": npy_bytes((2, 4, 4), data=bytes(32)), "labels.npy": npy_bytes((2,), "|O", bytes(16))},
         r"labels \(array 'labels'\) must be integers, got object"),
        ({"images.npy": npy_bytes((2, 4, 4), data=bytes(32)), "labels.npy": npy_bytes((2,), "|b1", bytes(2))},
         r"labels \(array 'labels'\) must be integers, got bool"),
        ({"images.npy": b"\x93NUMPY\x03\x00" + bytes(40), "labels.npy": npy_bytes((2,), "<i8", bytes(16))},
         r"array 'images' is not a readable .npy array: .npy format version 3.0 is not supported"),
        ({"images.npy": b"not an npy file at all", "labels.npy": npy_bytes((2,), "<i8", bytes(16))},
         r"array 'images' is not a readable .npy array"),
    ],
)
def test_npz_headers_are_checked_before_loading(tmp_path, members, message):
    path = write_zip(tmp_path / "bad.npz", members)
    for check in (check_source, load_data):
        with pytest.raises(DataError, match=message):
            check(f"npz:{path}")


def test_an_object_array_is_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "pickled.npz", images=varied_images(2), labels=np.array([RunsAShellCommand(tmp_path / "x")] * 2))
    with pytest.raises(DataError, match="must be integers, got object"):
        load_data(f"npz:{tmp_path / 'pickled.npz'}")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------- npz array names


def test_keras_style_arrays_are_found_and_the_test_split_is_never_read(tmp_path):
    images, labels = varied_images(10, channels=3), small_labels(10).reshape(-1, 1)  # Keras CIFAR: labels (N, 1)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=images, y_train=labels)
    path = tmp_path / "keras.npz"
    path.write_bytes(buffer.getvalue())
    with zipfile.ZipFile(path, "a") as archive:  # a test split that fails if anything reads it
        archive.writestr("x_test.npy", b"reading x_test fails")
        archive.writestr("y_test.npy", b"reading y_test fails")
    data = load_data(f"npz:{path}", val_fraction=0.5)
    assert (data.in_channels, data.num_classes, data.train_images.shape[0] + data.val_images.shape[0]) == (3, 2, 10)
    assert check_source(f"npz:{path}") == SourceSummary(num_images=10, in_channels=3, num_classes=2)


def test_array_names_are_given_after_a_question_mark(tmp_path):
    np.savez(tmp_path / "named.npz", pixels=varied_images(6), classes=small_labels(6),
             images=np.zeros((2, 3), np.float32))
    data = load_data(f"npz:{tmp_path / 'named.npz'}?images=pixels&labels=classes")
    assert (data.in_channels, data.num_classes, data.image_size) == (1, 2, 4)
    with pytest.raises(DataError, match=r"named.npz has no array named as in labels=nope; arrays present: "
                                        r"\['classes', 'images', 'pixels'\]"):
        load_data(f"npz:{tmp_path / 'named.npz'}?images=pixels&labels=nope")


def test_a_file_name_with_a_question_mark_ends_with_one(tmp_path):
    np.savez(tmp_path / "odd?name.npz", images=varied_images(6), labels=small_labels(6))
    assert load_data(f"npz:{tmp_path / 'odd?name.npz'}?").num_classes == 2


# ----------------------------------------------------------------------------------------------- npz files


@pytest.mark.parametrize("kind", ["device", "directory", "fifo"])
def test_an_npz_that_is_not_a_regular_file_is_refused_as_such(tmp_path, kind):
    path = {"device": "/dev/zero", "directory": tmp_path, "fifo": tmp_path / "pipe"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    words = {"device": "character device", "directory": "directory", "fifo": "FIFO"}[kind]
    for check in (check_source, load_data):
        with pytest.raises(DataError, match=f"npz: {path} is not a regular file \\(it is a {words}\\); give a file"):
            check(f"npz:{path}")


# ----------------------------------------------------------------------------------------------- labels


def write_labels(path, labels, count=None):
    np.savez(path, images=varied_images(len(labels)), labels=labels)
    return f"npz:{path}"


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0, 1, 5_000_000]), r"must be below 100,000 \(at most 100,000 classes\), got 5000000; relabel"),
        (np.array([0, 1, 2**63 + 5], np.uint64), r"must be below 100,000 .*got 9223372036854775813"),
        (np.array([0, 1, -3], np.int8), r"labels \(array 'labels'\) must be >= 0, got -3"),
        (np.array([0, 999, 0, 999]), (r"must be exactly the classes 0..999 \(largest label \+ 1 = 1,000 classes\), "
                                      r"but labels 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... \(998 missing in all\) do not "
                                      r"occur; relabel the classes as 0..K-1")),
        (np.array([0, 2, 2, 0]), r"but labels 1 do not occur"),
    ],
)
def test_label_sets_that_are_not_0_to_k_minus_1_are_refused(tmp_path, labels, message):
    source = write_labels(tmp_path / "labels.npz", labels)
    for check in (check_source, load_data):
        with pytest.raises(DataError, match=message):
            check(source)


def test_labels_are_counted_before_anything_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(nas.data, "_resize_images", lambda *args: pytest.fail("resized before the label check"))
    with pytest.raises(DataError, match="at most 100,000 classes"):
        load_data(write_labels(tmp_path / "labels.npz", np.array([0, 1, MAX_CLASSES])), image_size=8)
    assert load_data(write_labels(tmp_path / "ok.npz", np.arange(6) % 3), val_fraction=0.5).num_classes == 3


def test_cifar_labels_beyond_64_bits_are_reported_as_they_are(tmp_path):
    write_pickle(tmp_path / "data_batch_1", {b"data": cifar_rows(range(3)), b"labels": [0, 1, 2**70]})
    with pytest.raises(DataError, match=r"b'labels' must be below 100,000 .*got 1180591620717411303424"):
        load_data(f"cifar10:{tmp_path}")


def test_check_source_skips_the_values_of_large_label_arrays(tmp_path, monkeypatch):
    source = write_labels(tmp_path / "labels.npz", np.array([0, 999, 0, 999]))
    monkeypatch.setattr(nas.sources, "_PREFLIGHT_LABEL_BYTES", 16)
    assert check_source(source) == SourceSummary(num_images=4, in_channels=1, num_classes=None)
    with pytest.raises(DataError, match="998 missing in all"):
        load_data(source)


def test_an_npz_of_one_class_is_refused_by_check_and_load(tmp_path):
    """With one class every candidate would score accuracy 1.0 and the search would rank by S and P alone."""
    source = write_labels(tmp_path / "one.npz", np.zeros(6, np.uint8))
    message = r"one.npz: labels \(array 'labels'\): found 1 class \(label 0\); at least 2 are needed"
    for check in (check_source, load_data):
        with pytest.raises(DataError, match=message):
            check(source)


def test_one_label_is_refused_by_load_when_check_source_skips_the_labels(tmp_path, monkeypatch):
    source = write_labels(tmp_path / "one.npz", np.zeros(6, np.int64))
    monkeypatch.setattr(nas.sources, "_PREFLIGHT_LABEL_BYTES", 16)
    assert check_source(source).num_classes is None
    with pytest.raises(DataError, match=r"found 1 class \(label 0\); at least 2 are needed"):
        load_data(source)


def test_a_cifar_batch_of_one_label_is_refused_by_load(tmp_path):
    """CIFAR's class count is fixed (10), so only the labels themselves show that a single class is present."""
    write_pickle(tmp_path / "data_batch_1", {b"data": cifar_rows(range(6)), b"labels": [3] * 6})
    with pytest.raises(DataError, match=(f"data source 'cifar10:{tmp_path}': found 1 class \\(label 3\\); "
                                         "at least 2 are needed, since with one every candidate's accuracy is 1.0")):
        load_data(f"cifar10:{tmp_path}", val_fraction=0.5)


# ----------------------------------------------------------------------------------------------- constant images


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.full((6, 4, 4), 7, np.uint8), "channel 0 of 1 \\(every training pixel is 7\\)"),
        (np.stack([varied_images(6), np.full((6, 4, 4), 200, np.uint8), varied_images(6)], axis=-1),
         "channel 1 of 3 \\(every training pixel is 200\\)"),
    ],
)
def test_constant_images_are_refused_by_channel(tmp_path, images, message):
    np.savez(tmp_path / "flat.npz", images=images, labels=small_labels(6))
    with pytest.raises(DataError, match=f"data source 'npz:.*flat.npz': all images are constant in {message}; "
                                        "nothing can be learned from it: check that the source holds real images"):
        load_data(f"npz:{tmp_path / 'flat.npz'}", val_fraction=0.5)


# ----------------------------------------------------------------------------------------------- imagefolder


def write_image_folder(directory, shapes=((20, 10), (12, 12)), colours=(("cat", (255, 0, 0)), ("dog", (0, 128, 255)))):
    for name, colour in colours:
        (directory / name).mkdir(parents=True, exist_ok=True)
        for number, shape in enumerate(shapes):
            Image.new("RGB", shape, colour).save(directory / name / f"{number}.png")
    return directory


def test_imagefolder_labels_follow_sorted_class_names(tmp_path):
    directory = write_image_folder(tmp_path, colours=(("zebra", (0, 128, 255)), ("ant", (255, 0, 0))))
    (directory / "zebra" / "notes.txt").write_text("not an image")
    data = load_data(f"imagefolder:{directory}", image_size=8, val_fraction=0.25)
    images, labels = all_images_and_labels(data)
    assert images.shape == (4, 3, 8, 8) and data.num_classes == 2
    assert (images[labels == 0, 0] == 255).all() and (images[labels == 0, 2] == 0).all()  # ant: red
    assert (images[labels == 1, 2] == 255).all() and (images[labels == 1, 0] == 0).all()  # zebra: blue


def test_imagefolder_resizes_the_shorter_side_and_crops_the_center(tmp_path):
    stripes = np.zeros((10, 30, 3), np.uint8)
    stripes[:, :10, 0] = stripes[:, 10:20, 1] = stripes[:, 20:, 2] = 255  # red | green | blue, left to right
    for name in ("left", "right"):  # two classes of the same picture
        (tmp_path / name).mkdir()
        Image.fromarray(stripes).save(tmp_path / name / "wide.png")
    images, _ = all_images_and_labels(load_data(f"imagefolder:{tmp_path}", image_size=5))
    assert images.shape == (2, 3, 5, 5)
    centre = images[:, :, :, 1:4]  # the filter of the outer columns reaches just past the crop box
    assert (centre[:, 1] == 255).all() and (centre[:, 0] == 0).all() and (centre[:, 2] == 0).all()
    assert (images[:, 1] >= 200).all() and (images[:, 0] < 60).all() and (images[:, 2] < 60).all()


def test_imagefolder_defaults_to_64_pixels(tmp_path):
    assert load_data(f"imagefolder:{write_image_folder(tmp_path)}").image_size == 64


def test_imagefolder_cache_is_created_reused_and_invalidated(tmp_path, monkeypatch):
    directory = write_image_folder(tmp_path)
    first = load_data(f"imagefolder:{directory}", image_size=8, val_fraction=0.25)
    cache = directory / CACHE_DIRNAME
    assert {path.name for path in cache.iterdir()} == {"images_8.npy", "labels_8.npy", "classes.json"}

    def no_pillow(*arguments, **keywords):
        raise AssertionError("Pillow was called although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", no_pillow)
        again = load_data(f"imagefolder:{directory}", image_size=8, val_fraction=0.25)
        assert torch.equal(first.train_images, again.train_images) and torch.equal(first.val_labels, again.val_labels)
        with pytest.raises(AssertionError, match="Pillow was called"):  # another size is not cached yet
            load_data(f"imagefolder:{directory}", image_size=6)

    load_data(f"imagefolder:{directory}", image_size=6)
    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", no_pillow)
        assert load_data(f"imagefolder:{directory}", image_size=6).image_size == 6
        assert load_data(f"imagefolder:{directory}", image_size=8).image_size == 8  # both sizes stay cached

    Image.new("RGB", (9, 9), (0, 255, 0)).save(directory / "dog" / "new.png")
    images, _ = all_images_and_labels(load_data(f"imagefolder:{directory}", image_size=8))
    assert images.shape[0] == 5 and int((images[:, 1] == 255).all(2).all(1).sum()) == 1
    assert not (cache / "images_6.npy").exists()  # built from the old file list, so dropped

    Image.new("RGB", (7, 7), (0, 255, 0)).save(directory / "cat" / "0.png")  # same count, changed file
    images, _ = all_images_and_labels(load_data(f"imagefolder:{directory}", image_size=8))
    assert int((images[:, 1] == 255).all(2).all(1).sum()) == 2


def test_imagefolder_works_without_a_writable_cache(tmp_path):
    directory = write_image_folder(tmp_path)
    (directory / CACHE_DIRNAME).write_text("a file where the cache folder would go")
    data = load_data(f"imagefolder:{directory}", image_size=8, val_fraction=0.25)
    assert data.train_images.shape == (3, 3, 8, 8)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="has no class subfolders"):
        load_data(f"imagefolder:{tmp_path}")
    write_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"class folder {tmp_path / 'empty'} holds no images"):
        load_data(f"imagefolder:{tmp_path}")
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_data(f"imagefolder:{tmp_path}", image_size=8)


def test_an_imagefolder_of_one_class_is_refused_by_check_and_load(tmp_path):
    directory = write_image_folder(tmp_path / "folder", colours=(("cat", (255, 0, 0)),))
    message = f"imagefolder: {directory}: found 1 class \\(class folder 'cat'\\); at least 2 are needed"
    for check in (check_source, load_data):
        with pytest.raises(DataError, match=message):
            check(f"imagefolder:{directory}")
    assert not (directory / CACHE_DIRNAME).exists()  # refused from the listing, before any image is decoded


def png_claiming(path, width, height):
    """A 1x1 PNG whose IHDR is patched to claim ``width`` x ``height`` pixels, with a valid chunk checksum."""
    Image.new("RGB", (1, 1), (9, 9, 9)).save(path)
    content = bytearray(path.read_bytes())
    content[16:24] = struct.pack(">II", width, height)  # IHDR data starts at byte 16: width, height
    content[29:33] = struct.pack(">I", zlib.crc32(bytes(content[12:29])))  # CRC of the chunk type and data
    path.write_bytes(bytes(content))
    return path


@pytest.mark.parametrize("side", [60_000, 10_000])  # beyond twice Pillow's limit (an error); between (a warning)
def test_imagefolder_refuses_a_decompression_bomb_by_name(tmp_path, side):
    directory = write_image_folder(tmp_path)
    png_claiming(directory / "cat" / "huge.png", side, side)
    filters = list(warnings.filters)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"imagefolder: image .*cat/huge.png is too large to decode safely "
                                            r"\(.*exceeds limit.*\); remove it"):
            load_data(f"imagefolder:{directory}", image_size=8)
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()
    assert warnings.filters == filters  # the warning is an error only while the folder decodes


def test_imagefolder_names_a_truncated_image(tmp_path):
    directory = write_image_folder(tmp_path)
    Image.fromarray(varied_images(1, size=64, channels=3)[0]).save(directory / "dog" / "cut.png")
    (directory / "dog" / "cut.png").write_bytes((directory / "dog" / "cut.png").read_bytes()[:200])
    with pytest.raises(DataError, match=r"imagefolder: cannot read image .*dog/cut.png: .*; remove or replace it"):
        load_data(f"imagefolder:{directory}", image_size=8)


def test_imagefolder_cache_is_written_through_the_safe_writer(tmp_path, monkeypatch):
    written, write_file = [], nas.data.write_file

    def recording_write_file(path, content, **options):
        written.append(path.name)
        return write_file(path, content, **options)

    monkeypatch.setattr(nas.data, "write_file", recording_write_file)
    directory = write_image_folder(tmp_path)
    load_data(f"imagefolder:{directory}", image_size=8, val_fraction=0.25)
    assert written == ["images_8.npy", "labels_8.npy", "classes.json"]
    assert sorted(path.name for path in (directory / CACHE_DIRNAME).iterdir()) == sorted(written)  # no temporaries


# ----------------------------------------------------------------------------------------------- check_source


def test_check_source_reads_no_npz_image_data(tmp_path):
    """Stored (not deflated) images whose pixel bytes are damaged far past the header (zipfile reads ahead 4 KiB):
    the headers pass, only loading fails."""
    np.savez(tmp_path / "data.npz", images=varied_images(64, size=16), labels=small_labels(64))
    content = bytearray((tmp_path / "data.npz").read_bytes())
    pixels = content.index(b"\x93NUMPY") + 10_000  # inside the images' 16 KiB of data
    content[pixels : pixels + 8] = b"\xff" * 8
    (tmp_path / "data.npz").write_bytes(bytes(content))
    assert check_source(f"npz:{tmp_path / 'data.npz'}") == SourceSummary(64, 1, 2)
    with pytest.raises(DataError, match=r"data.npz: images \(array 'images'\): cannot read its data: Bad CRC-32"):
        load_data(f"npz:{tmp_path / 'data.npz'}")


# ----------------------------------------------------------------------------------------------- hold-out split


def indexed_npz(path, count):
    """An npz whose image i is filled with the value i (but for a last pixel of 255, so that no training split is
    constant), so a loaded image tells which source image it is."""
    images = np.repeat(np.arange(count, dtype=np.uint8), 16).reshape(count, 4, 4)
    images[:, -1, -1] = 255
    np.savez(path, images=images, labels=np.arange(count) % 3)
    return f"npz:{path}"


def identities(images: torch.Tensor) -> list[int]:
    return images[:, 0, 0, 0].tolist()


@pytest.mark.parametrize(
    ("count", "val_fraction", "val_count"), [(200, 0.1, 20), (20, 0.01, 1), (7, 0.5, 4), (2, 0.5, 1)]
)
def test_holdout_split_is_disjoint_and_sized(tmp_path, count, val_fraction, val_count):
    data = load_data(indexed_npz(tmp_path / "data.npz", count), val_fraction=val_fraction)
    train, val = identities(data.train_images), identities(data.val_images)
    assert len(val) == val_count and len(train) == count - val_count
    assert sorted(train + val) == list(range(count))
    assert data.val_labels.tolist() == [identity % 3 for identity in val]


def test_holdout_split_is_seeded(tmp_path):
    source = indexed_npz(tmp_path / "data.npz", 100)
    first, again, other = (identities(load_data(source, seed=seed).val_images) for seed in (0, 0, 1))
    assert first == again and first != other


# ----------------------------------------------------------------------------------------------- ImageData


def test_image_data_to_moves_every_tensor_into_a_new_object():
    data = load_data(SMALL_SYNTHETIC)
    moved = data.to("cpu")
    assert moved is not data and moved.name == data.name and moved.mean == data.mean
    assert torch.equal(moved.train_images, data.train_images) and torch.equal(moved.val_labels, data.val_labels)
    meta = data.to("meta")
    assert all(tensor.is_meta for tensor in (meta.train_images, meta.train_labels, meta.val_images, meta.val_labels))


def test_image_data_checks_its_tensors():
    data = load_data(SMALL_SYNTHETIC)
    with pytest.raises(DataError, match=r"train_images must be a uint8 \(N, C, S, S\) tensor, got torch.float32"):
        ImageData(**{**vars(data), "train_images": data.train_images.float()})
    with pytest.raises(DataError, match=r"val_labels must be an int64 \(20,\) tensor"):
        ImageData(**{**vars(data), "val_labels": data.val_labels[:5]})
    with pytest.raises(DataError, match="one value per channel"):
        ImageData(**{**vars(data), "mean": (0.5,)})


# ----------------------------------------------------------------------------------------------- DeviceBatches


def constant_images(values, channels=3, size=8) -> torch.Tensor:
    """uint8 (N, C, size, size) where image i is filled with values[i]."""
    return torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, channels, size, size).contiguous()


def batches_of(images, labels=None, **options) -> DeviceBatches:
    labels = torch.arange(len(images)) if labels is None else labels
    options = {"batch_size": 16, "mean": (0.5,) * images.shape[1], "std": (0.25,) * images.shape[1], **options}
    return DeviceBatches(images, labels, **options)


@pytest.mark.parametrize("augment", AUGMENTATIONS)
@pytest.mark.parametrize("channels_last", [True, False])
def test_batches_shapes_dtype_and_memory_format(augment, channels_last):
    images = torch.randint(0, 256, (100, 3, 12, 12), dtype=torch.uint8)
    batches = batches_of(images, batch_size=32, augment=augment, channels_last=channels_last)
    assert len(batches) == 3
    collected = list(batches)
    assert len(collected) == 3
    for batch, labels in collected:
        assert batch.shape == (32, 3, 12, 12) and batch.dtype == torch.float32
        assert labels.shape == (32,) and labels.dtype == torch.int64
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert batch.is_contiguous(memory_format=layout)


def test_drop_last_and_len():
    images = torch.zeros((100, 3, 4, 4), dtype=torch.uint8)
    assert len(batches_of(images, batch_size=32)) == 3
    evaluation = batches_of(images, batch_size=32, drop_last=False, shuffle=False, augment="none")
    assert len(evaluation) == 4
    assert [len(labels) for _, labels in evaluation] == [32, 32, 32, 4]
    assert len(batches_of(images, batch_size=101)) == 0 and list(batches_of(images, batch_size=101)) == []
    assert len(batches_of(images, batch_size=101, drop_last=False)) == 1


def test_evaluation_batches_keep_the_order():
    images = constant_images(range(40))
    batches = batches_of(images, batch_size=16, augment="none", shuffle=False, drop_last=False)
    labels = torch.cat([labels for _, labels in batches])
    assert labels.tolist() == list(range(40))


def test_normalization_of_constant_images():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    batches = batches_of(constant_images([51] * 20), mean=mean, std=std, augment="none", batch_size=20)
    batch, _ = next(iter(batches))
    expected = [(51 / 255 - channel_mean) / channel_std for channel_mean, channel_std in zip(mean, std)]
    assert batch.mean((0, 2, 3)).tolist() == pytest.approx(expected, abs=1e-5)
    assert batch.std((0, 2, 3)).max().item() < 1e-5


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_labels_stay_with_their_images(augment):
    # Image i is filled with 10 + 2 * label; a crop may add zero padding but must never bring in another sample.
    labels = torch.randint(0, 100, (96,))
    images = constant_images((10 + 2 * labels).tolist(), size=10)
    batches = batches_of(images, labels, batch_size=32, augment=augment, mean=(0.3, 0.4, 0.5), std=(0.2, 0.3, 0.4))
    seen = 0
    for _ in range(2):  # two epochs
        for batch, batch_labels in batches:
            pixels = denormalize(batch, (0.3, 0.4, 0.5), (0.2, 0.3, 0.4)).round().flatten(1)  # (B, C * S * S)
            expected = (10 + 2 * batch_labels).float().view(-1, 1)
            if augment in ("crop_flip", "crop"):
                assert ((pixels == expected) | (pixels == 0)).all()
                assert ((pixels == expected).float().mean(1) >= (6 / 10) ** 2).all()  # at most 4 of 10 rows/columns cut
            else:
                assert (pixels == expected).all()
            seen += len(batch_labels)
    assert seen == 2 * 96


def test_an_epoch_visits_every_image_once():
    images = constant_images(range(50))
    batches = batches_of(images, batch_size=16, augment="none", drop_last=False)
    first = torch.cat([labels for _, labels in batches])
    assert sorted(first.tolist()) == list(range(50)) and first.tolist() != list(range(50))


def test_batches_are_determined_by_the_seed_and_epochs_differ():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)

    def epochs(seed, augment, count=2):
        batches = batches_of(images, batch_size=16, augment=augment, seed=seed)
        return [[(batch.clone(), labels.clone()) for batch, labels in batches] for _ in range(count)]

    for augment in AUGMENTATIONS:
        first, again, other = epochs(1, augment), epochs(1, augment), epochs(2, augment)
        for epoch in range(2):
            for (batch, labels), (batch_again, labels_again) in zip(first[epoch], again[epoch]):
                assert torch.equal(batch, batch_again) and torch.equal(labels, labels_again)
        assert not torch.equal(first[0][0][0], first[1][0][0])
        assert not torch.equal(first[0][0][0], other[0][0][0])


def test_an_interrupted_epoch_does_not_change_the_next():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    complete, interrupted = batches_of(images, seed=5), batches_of(images, seed=5)
    list(complete)
    next(iter(interrupted))
    for (batch, labels), (other_batch, other_labels) in zip(complete, interrupted):
        assert torch.equal(batch, other_batch) and torch.equal(labels, other_labels)


def crop_candidates(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every translation (zero padded) of one uint8 (C, S, S) image, and their horizontal flips."""
    side = image.shape[-1]
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    crops = [
        padded[:, top : top + side, left : left + side]
        for top in range(2 * padding + 1)
        for left in range(2 * padding + 1)
    ]
    return crops + [crop.flip(-1) for crop in crops]


@pytest.mark.parametrize("padding", [0, 2])
def test_crop_flip_is_a_padded_translation_and_flip(padding):
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    batches = batches_of(images, batch_size=64, crop_padding=padding, mean=(0, 0, 0), std=(1, 1, 1))
    batch, labels = next(iter(batches))
    pixels = (batch * 255).round().to(torch.uint8)
    matches = [
        [index for index, crop in enumerate(crop_candidates(images[label], padding)) if torch.equal(crop, pixels[row])]
        for row, label in enumerate(labels.tolist())
    ]
    assert all(matches), "every output must be one translation (and maybe flip) of its own image"
    positions = (2 * padding + 1) ** 2
    flipped = sum(match[0] >= positions for match in matches)
    assert 10 < flipped < 54  # both outcomes happen
    if padding:
        assert len({match[0] % positions for match in matches}) > 5  # many different translations
    else:
        assert all(match[0] % positions == 0 for match in matches)  # flip only


def test_resized_crop_flip_output_size_and_range():
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    for image_size in (None, 12, 24):
        batches = batches_of(images, augment="resized_crop_flip", image_size=image_size, mean=(0, 0, 0), std=(1, 1, 1))
        batch, _ = next(iter(batches))
        assert batch.shape == (16, 3, image_size or 16, image_size or 16)
        assert batch.min() >= 0 and batch.max() <= 1 + 1e-6
        assert batch.is_contiguous(memory_format=torch.channels_last)


def test_resized_crop_flip_zooms_in():
    # A left-to-right ramp: a crop covers a narrower range of values than the whole image.
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).view(1, 1, 1, 32).expand(64, 3, 32, 32).contiguous()
    batch, _ = next(iter(batches_of(ramp, batch_size=64, augment="resized_crop_flip", mean=(0, 0, 0), std=(1, 1, 1))))
    spread = batch.amax((1, 2, 3)) - batch.amin((1, 2, 3))
    assert (spread < 0.97).float().mean() > 0.5
    slopes = batch[:, 0, 0, -1] - batch[:, 0, 0, 0]
    assert (slopes > 0).any() and (slopes < 0).any()  # flipped and unflipped


@pytest.mark.parametrize("augment", ["crop_flip", "none"])
def test_batches_are_resized_to_image_size(augment):
    batches = batches_of(constant_images([100] * 20, size=16), augment=augment, image_size=8, crop_padding=0)
    batch, _ = next(iter(batches))
    assert batch.shape == (16, 3, 8, 8) and batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(denormalize(batch, (0.5,) * 3, (0.25,) * 3), torch.tensor(100.0), atol=1e-3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"augment": "mixup"}, (r"augment must be one of \('crop_flip', 'crop', 'resized_crop_flip', 'resized_crop', "
                                r"'none'\), got 'mixup'")),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": True}, "batch_size must be an integer >= 1, got True"),
        ({"image_size": -1}, "image_size must be an integer >= 1 or None, got -1"),
        ({"crop_padding": -1}, "crop_padding must be an integer >= 0, got -1"),
        ({"randaugment_magnitude": 31}, r"randaugment_magnitude must be a number in \[0, 30\], got 31"),
        ({"randaugment_magnitude": "5"}, r"randaugment_magnitude must be a number in \[0, 30\], got '5'"),
        ({"mean": (0.5,)}, "mean and std must have 3 values"),
        ({"std": (0.5, 0.0, 0.5)}, "std must be positive"),
        ({"seed": -3}, "seed must be an integer >= 0, got -3"),
    ],
)
def test_batch_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        batches_of(torch.zeros((8, 3, 4, 4), dtype=torch.uint8), **options)


def test_batch_tensor_errors():
    with pytest.raises(ValueError, match=r"images must be a uint8 \(N, C, S, S\) tensor, got torch.float32"):
        batches_of(torch.zeros((8, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"labels must be an int64 \(8,\) tensor"):
        batches_of(torch.zeros((8, 3, 4, 4), dtype=torch.uint8), torch.zeros(8, dtype=torch.int32))
    with pytest.raises(ValueError, match="at least one image"):
        batches_of(torch.zeros((0, 3, 4, 4), dtype=torch.uint8))


def test_synthetic_data_flows_into_batches():
    # Normalized with the training split's own statistics, the whole split has zero mean and unit std per channel.
    data = load_data(SMALL_SYNTHETIC)
    batches = DeviceBatches(
        data.train_images, data.train_labels, batch_size=60, mean=data.mean, std=data.std, augment="none"
    )
    batch = torch.cat([batch for batch, _ in batches])
    assert batch.shape == (180, 3, 16, 16)
    assert batch.mean((0, 2, 3)).tolist() == pytest.approx([0, 0, 0], abs=1e-4)
    assert batch.std((0, 2, 3), correction=0).tolist() == pytest.approx([1, 1, 1], abs=1e-4)
