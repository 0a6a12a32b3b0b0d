"""benchmarks/fashion_mnist.py (issue 29): official idx files in, checked by their md5, npz files out; a file that
is not the official one is refused by name."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from bench_support import script_module


@pytest.fixture
def fashion():
    yield from script_module("fashion_mnist")


def idx(array: np.ndarray) -> bytes:
    """``array`` in LeCun's idx format (unsigned bytes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(side.to_bytes(4, "big") for side in array.shape)
    return header + array.astype(np.uint8).tobytes()


def idx_folder(folder, fashion, *, gzipped=True):
    """Four small idx files (10 classes, 30 per class to train, 5 to test) and their md5 sums."""
    generator = np.random.default_rng(0)
    arrays = {"train_labels": np.repeat(np.arange(10), 30), "test_labels": np.repeat(np.arange(10), 5)}
    arrays["train_images"] = generator.integers(0, 256, (300, 28, 28))
    arrays["test_images"] = generator.integers(0, 256, (50, 28, 28))
    sums = {}
    for role, name in fashion.FILES.items():
        content = idx(arrays[role])
        sums[role] = hashlib.md5(content).hexdigest()
        path = folder / (f"{name}.gz" if gzipped else name)
        path.write_bytes(gzip.compress(content) if gzipped else content)
    return arrays, sums


@pytest.mark.parametrize("gzipped", [True, False])
def test_the_idx_files_are_read_whole_after_their_sums_are_checked(fashion, tmp_path, gzipped):
    arrays, sums = idx_folder(tmp_path, fashion, gzipped=gzipped)
    read = fashion.read_idx_folder(tmp_path, sums)
    for role, array in arrays.items():
        assert np.array_equal(read[role], array)
    assert read["train_images"].dtype == np.uint8 and read["train_labels"].dtype == np.int64


def test_a_file_that_is_not_the_official_one_is_refused_by_name(fashion, tmp_path):
    arrays, sums = idx_folder(tmp_path, fashion)
    tampered = arrays["test_images"].copy()
    tampered[0, 0, 0] ^= 1
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(tampered)))
    refused = rf"t10k-images-idx3-ubyte.gz: md5 of its content is [0-9a-f]{{32}}, the official file's is {sums['test_images']}"
    with pytest.raises(fashion.FashionMnistError, match=refused):
        fashion.read_idx_folder(tmp_path, sums)
    with pytest.raises(fashion.FashionMnistError, match="the official file's is f4a8712d7a061bf5bd6d2ca38dc4d50a"):
        fashion.read_idx_folder(tmp_path)  # the real sums refuse these made-up files, the first one read first
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(fashion.FashionMnistError, match="has no train-labels-idx1-ubyte.gz"):
        fashion.read_idx_folder(tmp_path, sums)


def test_the_subset_draws_the_same_count_per_class_from_the_training_split_only(fashion):
    labels = np.repeat(np.arange(10), 50)
    images = np.arange(500).reshape(500, 1, 1)  # each image its own index
    chosen_images, chosen_labels = fashion.subset(images, labels, per_class=20, seed=0)
    assert np.bincount(chosen_labels).tolist() == [20] * 10
    assert np.array_equal(labels[chosen_images.reshape(-1)], chosen_labels)  # each image keeps its label
    assert len(set(chosen_images.reshape(-1).tolist())) == 200  # without replacement
    again = fashion.subset(images, labels, per_class=20, seed=0)
    assert np.array_equal(again[0], chosen_images)  # seeded


def test_the_script_writes_both_files_and_keeps_them_unless_forced(fashion, tmp_path, monkeypatch, capsys):
    (tmp_path / "idx").mkdir()
    arrays, sums = idx_folder(tmp_path / "idx", fashion)
    official = fashion.read_idx_folder
    monkeypatch.setattr(fashion, "read_idx_folder", lambda folder: official(folder, sums))
    monkeypatch.setattr(fashion, "SUBSET_PER_CLASS", 10)
    argv = [str(tmp_path / "idx"), "-o", str(tmp_path / "out")]
    assert fashion.main(argv) == 0
    full = np.load(tmp_path / "out" / fashion.FULL_FILE)
    assert sorted(full.files) == ["x_test", "x_train", "y_test", "y_train"]  # Keras names: npz:FILE reads x_train
    assert np.array_equal(full["x_test"], arrays["test_images"]) and np.array_equal(full["y_train"],
                                                                                    arrays["train_labels"])
    small = np.load(tmp_path / "out" / fashion.SUBSET_FILE)
    assert sorted(small.files) == ["images", "labels"] and np.bincount(small["labels"]).tolist() == [10] * 10
    before = (tmp_path / "out" / fashion.FULL_FILE).read_bytes()
    assert fashion.main(argv) == 2 and "exist(s); --force overwrites" in capsys.readouterr().err
    assert (tmp_path / "out" / fashion.FULL_FILE).read_bytes() == before
    assert fashion.main([*argv, "--force"]) == 0
