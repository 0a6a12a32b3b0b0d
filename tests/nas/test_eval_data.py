"""A separate evaluation set (issue 29): `nas train --eval-data` trains on all of --data and measures accuracy on
another source, every epoch and at the end; a campaign never reads a test split."""

from __future__ import annotations

import io
import json

import numpy as np
import optuna
import pytest

import nas.sources
from nas import campaign as campaigns
from nas.campaign import CampaignConfig
from nas.cli import main
from nas.data import load_data_with_evaluation
from nas.local import LocalExecutor
from nas.recipe import TimingConfig
from nas.records import EvalResult
from nas.sources import DataError


def keras_file(path, *, train=300, test=100, side=12, test_side=None, test_classes=3, channels=None, seed=0):
    """A Keras-style npz: x_train/y_train with 3 classes, x_test/y_test, images whose mean brightness is their
    class (so a network can learn them)."""
    generator = np.random.default_rng(seed)

    def split(count, size, classes):
        labels = np.arange(count) % classes
        shape = (count, size, size) if channels is None else (count, size, size, channels)
        noise = generator.integers(0, 60, size=shape)
        images = (noise + labels.reshape(-1, *[1] * (len(shape) - 1)) * 80).clip(0, 255).astype(np.uint8)
        return images, labels

    x_train, y_train = split(train, side, 3)
    x_test, y_test = split(test, test_side or side, test_classes)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return x_train, y_train, x_test, y_test


def test_the_whole_training_source_trains_and_the_whole_evaluation_source_evaluates(tmp_path):
    x_train, y_train, x_test, y_test = keras_file(tmp_path / "k.npz")
    test_set = f"npz:{tmp_path / 'k.npz'}?images=x_test&labels=y_test"
    data = load_data_with_evaluation(f"npz:{tmp_path / 'k.npz'}", test_set)
    assert (len(data.train_labels), len(data.val_labels)) == (300, 100)  # no hold-out taken from the training data
    assert data.train_labels.tolist() == y_train.tolist() and data.val_labels.tolist() == y_test.tolist()
    assert data.mean[0] == pytest.approx(x_train.mean() / 255, abs=1e-6)  # the training images' normalization
    assert data.evaluated_on == test_set
    resized = load_data_with_evaluation(f"npz:{tmp_path / 'k.npz'}", test_set, image_size=16)
    assert resized.train_images.shape[-1] == resized.val_images.shape[-1] == 16


@pytest.mark.parametrize("change, words", [
    ({"test_classes": 2}, "has classes 2, the training data"),
    ({"test_side": 16}, "has image size 16, the training data"),
])
def test_an_evaluation_set_of_another_task_is_refused_by_name(tmp_path, change, words):
    keras_file(tmp_path / "k.npz", **change)
    with pytest.raises(DataError, match=words):
        load_data_with_evaluation(f"npz:{tmp_path / 'k.npz'}",
                                  f"npz:{tmp_path / 'k.npz'}?images=x_test&labels=y_test")


def test_an_evaluation_set_with_other_channels_is_refused(tmp_path):
    keras_file(tmp_path / "gray.npz")
    keras_file(tmp_path / "rgb.npz", channels=3)
    with pytest.raises(DataError, match="has channels 3, the training data .* 1: they must describe the same task"):
        load_data_with_evaluation(f"npz:{tmp_path / 'gray.npz'}",
                                  f"npz:{tmp_path / 'rgb.npz'}?images=x_test&labels=y_test")


def test_nas_train_evaluates_on_the_test_set_every_epoch_and_says_so(tmp_path, capsys):
    keras_file(tmp_path / "k.npz")
    test_set = f"npz:{tmp_path / 'k.npz'}?images=x_test&labels=y_test"
    status = main(["train", "tiny", "--data", f"npz:{tmp_path / 'k.npz'}", "--eval-data", test_set, "--epochs", "2",
                   "--batch-size", "32", "--device", "cpu", "--json", "--save", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert status == 0, err
    record = json.loads(out)
    assert record["evaluated_on"] == {"data": test_set, "images": 100}
    history = record["history"]
    assert [epoch["eval_accuracy"] is not None for epoch in history] == [True, True]
    assert history[-1]["eval_accuracy"] == pytest.approx(record["accuracy"])  # the last epoch's is the final one
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["evaluated_on"] == record["evaluated_on"]
    status = main(["train", "tiny", "--data", f"npz:{tmp_path / 'k.npz'}", "--epochs", "1", "--batch-size", "32",
                   "--device", "cpu"])
    out, err = capsys.readouterr()
    assert status == 0 and f"30 images: the hold-out of npz:{tmp_path / 'k.npz'}" in out  # without: the hold-out


def test_a_campaign_on_a_file_with_a_test_split_never_reads_it(tmp_path, monkeypatch):
    keras_file(tmp_path / "k.npz")
    read = []
    original = nas.sources._read_npy

    def recording(path, archive, header):
        read.append(header.name)
        return original(path, archive, header)

    monkeypatch.setattr(nas.sources, "_read_npy", recording)
    monkeypatch.chdir(tmp_path)

    def measured(spec, data, config, rungs=None):
        assert len(data.train_labels) + len(data.val_labels) == 300  # the training arrays, split for the hold-out
        return EvalResult(status="ok", accuracy=0.5, step_time_s=0.01, step_time_iqr_s=0.001, parameters=1000,
                          macs=10, device="cpu", wall_time_s=1.0, epochs_completed=1)

    config = CampaignConfig(data=f"npz:{tmp_path / 'k.npz'}", trials=2, controller="random", study="k",
                            timing=TimingConfig(batch_size=8, warmup=1, pairs=2, window_s=0.02, precision=None,
                                                max_stall=None))
    config.check_inputs()
    campaigns.run_campaign(config, LocalExecutor(trainer=measured), out=io.StringIO())
    assert read and set(read) <= {"x_train", "y_train"}
    assert len(optuna.load_study(study_name="k", storage="sqlite:///runs/k.db").trials) == 2
