"""Campaign files: defaults, overrides, refusal of unknown keys, and the proxy settings a study is bound to."""

from pathlib import Path

import pytest

from nas.campaign import CampaignConfig, CampaignError, load_campaign

EXPERIMENTS = sorted((Path(__file__).parents[2] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_shipped_campaigns_load(path):
    config = load_campaign(path)
    assert config.trials >= 1 and config.train.epochs >= 1


def test_demo_campaign_is_small():
    demo = load_campaign(Path(__file__).parents[2] / "experiments" / "cpu-demo.yaml")
    assert demo.space == "tiny" and demo.data.startswith("synthetic") and demo.trials <= 20


def test_overrides_reach_the_training_settings_and_ignore_missing_flags():
    config = CampaignConfig().with_overrides({"epochs": 3, "batch_size": 32, "image_size": None, "trials": 7,
                                              "controller": "random", "study": None})
    assert (config.train.epochs, config.train.batch_size, config.train.image_size) == (3, 32, None)
    assert (config.trials, config.controller, config.study) == (7, "random", "nas")


def test_default_storage_is_sqlite_under_runs():
    assert CampaignConfig(study="abc").storage_url == "sqlite:///runs/abc.db"
    assert CampaignConfig(storage="postgresql://h/db").storage_url == "postgresql://h/db"


def test_proxy_settings_leave_out_what_does_not_change_a_measurement():
    base = CampaignConfig()
    assert base.proxy_settings() == base.with_overrides({"trials": 99, "workers": 4, "controller": "tpe"}).proxy_settings()
    assert base.proxy_settings() != base.with_overrides({"epochs": 5}).proxy_settings()
    assert "device" not in base.proxy_settings()["train"] and "threads" not in base.proxy_settings()["train"]


@pytest.mark.parametrize(
    "data, words",
    [({"colour": 1}, ["unknown campaign key", "colour"]), ({"train": {"device": "cuda"}}, ["unknown train key"]),
     ({"train": {"epochs": 0}}, ["epochs"]), ({"trials": 0}, ["trials"]), ({"controller": "lstm"}, ["controller"]),
     ({"study": "../x"}, ["study"]), ({"gpus_per_trial": -1}, ["gpus_per_trial"]), ({"train": [1]}, ["train"]),
     ({"val_fraction": 0.9}, ["val_fraction"]), ({"workers": True}, ["workers"])],
)
def test_bad_campaigns_are_refused(data, words):
    with pytest.raises(CampaignError) as error:
        CampaignConfig.from_dict(data)
    for word in words:
        assert word in str(error.value)


def test_campaign_file_errors_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trials: -1\n")
    with pytest.raises(CampaignError, match=r"c\.yaml: trials"):
        load_campaign(path)
    with pytest.raises(FileNotFoundError):
        load_campaign(tmp_path / "missing.yaml")
