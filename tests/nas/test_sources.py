"""Checking data sources without loading them, and without torch (nas/sources.py).

Errors that loading must raise as well are tested through both entry points in tests/nas/test_data.py."""

import subprocess
import sys

import numpy as np
import pytest

import nas.sources
from nas.sources import DataError, SourceSummary, check_source


def empty_files(directory, *names):
    """Creates ``directory`` holding empty files: any attempt to read or decode one of them fails."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(b"")
    return directory


def test_the_module_imports_no_torch():
    """The ledger (campaign config, study) checks sources in processes that never train."""
    code = "import sys, nas.sources\nnas.sources.check_source('synthetic')\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_check_source_summarizes_each_source_without_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(nas.sources, "_read_cifar_batch", lambda *args: pytest.fail("check_source read a CIFAR batch"))
    assert check_source("synthetic:num_classes=4,num_images=500") == SourceSummary(500, 3, 4)
    assert check_source("synthetic") == SourceSummary(10000, 3, 10)
    cifar10 = empty_files(tmp_path / "c10", "data_batch_1", "data_batch_2", "data_batch_3", "test_batch")
    assert check_source(f"cifar10:{cifar10}") == SourceSummary(30000, 3, 10)
    assert check_source(f"cifar100:{empty_files(tmp_path / 'c100', 'train')}") == SourceSummary(50000, 3, 100)
    folder = empty_files(tmp_path / "folder", "cat/0.png", "cat/1.jpg", "dog/0.png", "dog/1.png", "dog/notes.txt")
    assert check_source(f"imagefolder:{folder}") == SourceSummary(4, 3, 2)
    np.savez(tmp_path / "rgb.npz", images=np.zeros((12, 4, 4, 3), np.uint8), labels=np.arange(12) % 4)
    assert check_source(f"npz:{tmp_path / 'rgb.npz'}") == SourceSummary(12, 3, 4)
    assert check_source(f"npz:{tmp_path / 'missing.npz'}", files=False) == SourceSummary(None, None, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("num_classes=1", "synthetic option num_classes must be an integer >= 2, got 1"),
        ("num_classes=0", "synthetic option num_classes must be an integer >= 2, got 0"),
        ("num_images=0", "synthetic option num_images must be an integer >= 1, got 0"),
        ("image_size=0", "synthetic option image_size must be an integer >= 1, got 0"),
    ],
)
def test_check_source_refuses_synthetic_options_below_their_minimum(options, message):
    """One class would give every candidate accuracy 1.0: refused before a campaign makes its study."""
    with pytest.raises(DataError, match=message):
        check_source(f"synthetic:{options}", files=False)


def test_check_source_refuses_a_one_class_imagefolder_from_its_listing(tmp_path):
    folder = empty_files(tmp_path / "folder", "cat/0.png", "cat/1.png", ".hidden/0.png")
    with pytest.raises(DataError, match=r"found 1 class \(class folder 'cat'\); at least 2 are needed"):
        check_source(f"imagefolder:{folder}")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("pixels=x", (r"unknown npz option 'pixels' in 'npz:data.npz\?pixels=x'; allowed options: images, labels, "
                      r"flip \(as in 'npz:FILE\?images=x_train&labels=y_train&flip=no'\)")),
        ("flip=maybe", r"npz option flip must be one of yes, no, got 'maybe'"),
        ("flip=", r"npz option flip needs a value, 'flip=yes' or 'flip=no'"),
        ("flip=no&flip=yes", r"npz option flip is given twice"),
        ("images", r"npz option images needs an array name, 'images=NAME', got 'images'"),
        ("images=", r"npz option images needs an array name"),
        ("images=a&images=b", r"npz option images is given twice"),
    ],
)
def test_npz_option_errors_are_refused_before_any_file_is_read(query, message):
    with pytest.raises(DataError, match=message):
        check_source(f"npz:data.npz?{query}", files=False)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.mkdir(), "has no class subfolders"),
        (lambda path: empty_files(path, "cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"),
         r"4 images of 3x2048x2048 pixels are 0.0 GiB; the limit is 0 GiB"),
    ],
)
def test_check_source_refuses_imagefolders_from_their_listing(tmp_path, monkeypatch, make, message):
    make(tmp_path / "folder")
    monkeypatch.setattr(nas.sources, "MAX_DATASET_BYTES", 1 << 20)
    with pytest.raises(DataError, match=message):
        check_source(f"imagefolder:{tmp_path / 'folder'}", image_size=2048)


def test_check_source_refuses_a_cifar10_directory_without_batches(tmp_path):
    with pytest.raises(DataError, match=f"no data_batch_\\* files in {tmp_path}"):
        check_source(f"cifar10:{tmp_path}")


def test_the_arrays_a_run_leaves_aside_are_named(tmp_path):
    """A Keras-style file's test split is found and named (issue 28), never read; other sources have none."""
    images, labels = np.zeros((12, 4, 4), np.uint8), np.arange(12) % 4
    np.savez(tmp_path / "keras.npz", x_train=images, y_train=labels, x_test=images[:4], y_test=labels[:4])
    np.savez(tmp_path / "plain.npz", images=images, labels=labels)
    assert nas.sources.npz_unused_arrays(f"npz:{tmp_path / 'keras.npz'}") == ("x_test", "y_test")
    assert nas.sources.npz_unused_arrays(f"npz:{tmp_path / 'keras.npz'}?images=x_test&labels=y_test") == (
        "x_train", "y_train")
    assert nas.sources.npz_unused_arrays(f"npz:{tmp_path / 'plain.npz'}") == ()
    assert nas.sources.npz_unused_arrays("synthetic") == ()


@pytest.mark.parametrize("source, words", [
    ("npz:f.npz", "mirrored only with ?flip=yes"),  # not "mirror images change this data's labels": a shirt is a shirt
    ("npz:f.npz?flip=yes", "flip=yes: mirror images keep its labels"),
    ("synthetic", "orientations are their classes"),
    ("cifar10:d", "photographs keep their labels"),
])
def test_the_flip_rule_is_said_as_it_is_applied(source, words):
    assert words in nas.sources.flip_rule(source)
