"""Bad input matrix: hostile campaign files, spec files and output paths, run through the real ``nas`` command.

Every case must be refused with exit status 2 and one line on stderr that names the bad field (and the allowed
values where there are some), without a traceback, and with nothing written or executed: the working directory
(and a directory beside it) is byte-for-byte what it was, so no ``runs/``, no study database, no ``pwned`` file
from a YAML tag and an untouched pre-existing output file; and Ray, data loading, training and benchmarking are
tripwires that fail the test if they are reached.
"""

from __future__ import annotations

import io
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import yaml
from PIL import Image

import nas.data
import nas.local
import nas.measure
import nas.ray_head
import nas.train
from nas.campaign import CampaignConfig
from nas.cli import EXIT_USAGE, main
from nas.recipe import TrainConfig
from nas.train import CHECKPOINT_VERSION
from search_spaces import presets
from search_spaces.files import FileLock
from search_spaces.io import MAX_YAML_BYTES

ROOT = Path(__file__).resolve().parents[1]
KEEP = b"# a file the refused command must leave alone\nname: keep\n"

# --- inputs ---------------------------------------------------------------------------------------------------------

BASE_CAMPAIGN = {
    "space": "tiny",
    "data": "synthetic:num_images=640,image_size=32",
    "trials": 4,
    "controller": "random",
    "study": "hostile",
    "workers": 1,
    "cpus_per_trial": 1,
    "train": {"epochs": 1, "batch_size": 64},
}


def campaign(**changes: object) -> str:
    return yaml.safe_dump({**BASE_CAMPAIGN, **changes}, sort_keys=False)


def campaign_train(**changes: object) -> str:
    return campaign(train={**BASE_CAMPAIGN["train"], **changes})


def spec(**changes: object) -> str:
    return yaml.safe_dump({**presets.get("tiny").to_dict(), **changes}, sort_keys=False)


def stage(index: int, **changes: object) -> str:
    stages = presets.get("tiny").to_dict()["stages"]
    stages[index] = {**stages[index], **changes}
    return spec(stages=stages)


def laughs(depth: int) -> str:
    """A "billion laughs" flow list: 10^depth values once its aliases are expanded, a few hundred bytes as text."""
    parts = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"&l{level} [{', '.join([f'*l{level - 1}'] * 10)}]" for level in range(1, depth + 1)]
    return f"[{', '.join(parts)}]"


# Cases that no YAML document of either kind survives: (file text, words the one-line message must hold).
HOSTILE_YAML = {
    "empty file": ("", ("mapping", "NoneType")),
    "a list, not a mapping": ("- space\n- trials\n", ("mapping", "list")),
    "a scalar, not a mapping": ("42\n", ("mapping", "int")),
    "malformed YAML": ("space: [tiny\n", ("not valid YAML", "line 2")),
    "unhashable key": ("? [a, b]\n: 1\n", ("not valid YAML", "unhashable")),
    "deeply nested": ("[" * 5000 + "]" * 5000 + "\n", ("not valid YAML", "nested too deeply")),
    "huge file": ("#" * (MAX_YAML_BYTES + 10) + "\nspace: tiny\n", (f"at most {MAX_YAML_BYTES:,} bytes",)),
    "python/object/apply tag": ('!!python/object/apply:os.system ["touch pwned"]\n',
                                ("not valid YAML", "python/object/apply:os.system")),
    "python/object/new tag in a value": ('name: !!python/object/new:os.system ["touch pwned"]\n',
                                         ("not valid YAML", "python/object/new:os.system")),
    "python/name tag in a value": ("name: !!python/name:os.system\n", ("not valid YAML", "python/name:os.system")),
    "python/object/apply tag in a list": ('name: [!!python/object/apply:subprocess.call [["touch", "pwned"]]]\n',
                                          ("not valid YAML", "python/object/apply:subprocess.call")),
}

CAMPAIGN_CASES = {
    **HOSTILE_YAML,
    "billion laughs": (f"space: tiny\ntrials: {laughs(6)}\n", ("more than 100,000 values", "aliases")),
    # unknown keys
    "unknown top-level key": (campaign(colour="red"), ("unknown campaign key", "colour", "allowed keys", "trials")),
    "unknown train key": (campaign_train(colour="red"), ("unknown train key", "colour", "allowed keys", "epochs")),
    "runner-owned train key": (campaign_train(device="cuda"), ("unknown train key", "device")),
    "runner-owned train key, timing": (campaign_train(measure_step_time=False), ("unknown train key",
                                                                                 "measure_step_time")),
    "unknown timing key": (campaign(timing={"colour": 1}), ("unknown timing key", "colour", "allowed keys", "pairs")),
    "list for the timing mapping": (campaign(timing=[1]), ("timing must be a mapping",)),
    "bad timing precision": (campaign(timing={"amp": "fp8"}), ("amp", "one of", "bf16")),
    "10^9 px timing images": (campaign(timing={"image_size": 10**9}), ("image_size", "[1, 4096]")),
    "zero timing pairs": (campaign(timing={"pairs": 0}), ("pairs", "[1, 1000]")),
    "negative step-time limit": (campaign(max_step_time_ratio=-1), ("max_step_time_ratio", "(0, 1000000.0]", "-1")),
    "string for a parameter limit": (campaign(max_params_ratio="big"), ("max_params_ratio", "(0, 1000000.0]", "'big'")),
    "unknown progressive key": (campaign_train(epochs=4, progressive={"colour": 1}), ("progressive", "colour")),
    # wrong types
    "string for an int": (campaign(trials="5"), ("trials", "[1, 100000]", "'5'")),
    "float for an int": (campaign(trials=5.0), ("trials", "[1, 100000]", "5.0")),
    "bool for an int": (campaign(workers=True), ("workers", "[1, 1024]", "True")),
    "list for a mapping": (campaign(train=[1, 2]), ("train must be a mapping",)),
    "string for a mapping": (campaign(train="fast"), ("train must be a mapping",)),
    "list for a string": (campaign(controller=["rl"]), ("controller", "one of", "random")),
    "int for a study name": (campaign(study=5), ("study", "letters, digits")),
    "list for a storage URL": (campaign(storage=["sqlite:///x.db"]), ("storage", "string or null")),
    "int for an address": (campaign(address=6379), ("address", "string or null")),
    "list for a train int": (campaign_train(epochs=[1]), ("epochs", "[1, 10000]")),
    "string for a bool": (campaign_train(channels_last="yes"), ("channels_last", "true or false")),
    # huge values
    "10^12 trials": (campaign(trials=10**12), ("trials", "[1, 100000]", "1000000000000")),
    "10^6 workers": (campaign(workers=10**6), ("workers", "[1, 1024]")),
    "10^6 CPUs per trial": (campaign(cpus_per_trial=10**6), ("cpus_per_trial", "[1, 1024]")),
    "seed beyond 32 bits": (campaign(seed=2**64), ("seed", "[0, 4294967295]")),
    "10^9 epochs": (campaign_train(epochs=10**9), ("epochs", "[1, 10000]")),
    "10^9 batch size": (campaign_train(batch_size=10**9), ("batch_size", "[1, 65536]")),
    "10^6 px images": (campaign_train(image_size=10**6), ("image_size", "[1, 4096]")),
    "10^6 px progressive images": (campaign_train(epochs=4, progressive={"image_size": [64, 10**6]}),
                                   ("image_size", "at most 4096")),
    "10^12 synthetic images": (campaign(data="synthetic:num_images=1000000000000"),
                               ("data", "num_images", "at most 100,000,000")),
    "synthetic data beyond the memory cap": (campaign(data="synthetic:num_images=10000000,image_size=1024"),
                                             ("data", "GiB", "the limit is 64 GiB")),
    # negative and zero sizes
    "zero trials": (campaign(trials=0), ("trials", "[1, 100000]", "got 0")),
    "negative trials": (campaign(trials=-5), ("trials", "got -5")),
    "zero workers": (campaign(workers=0), ("workers", "[1, 1024]")),
    "negative GPUs": (campaign(gpus_per_trial=-1), ("gpus_per_trial", "[0, 64]")),
    "zero batch size": (campaign_train(batch_size=0), ("batch_size", "[1, 65536]")),
    "negative image size": (campaign_train(image_size=-32), ("image_size", "[1, 4096]")),
    "negative learning rate": (campaign_train(learning_rate=-0.1), ("learning_rate", "(0.0, 1000000.0]")),
    # NaN and infinity, as YAML writes them (.nan, .inf)
    "NaN val_fraction": (campaign(val_fraction=math.nan), ("val_fraction", "(0, 0.5]", "nan")),
    "NaN learning rate": (campaign_train(learning_rate=math.nan), ("learning_rate", "nan")),
    "infinite GPUs": (campaign(gpus_per_trial=math.inf), ("gpus_per_trial", "inf")),
    "infinite warm-up": (campaign_train(warmup_steps=math.inf), ("warmup_steps", "inf")),
    "minus infinite exponent": (campaign(step_time_exponent=-math.inf), ("step_time_exponent", "[-10, 10]")),
    # references to things that are not there
    "unknown data source": (campaign(data="imagenet:/data"), ("data", "imagenet", "allowed sources")),
    "missing data file": (campaign(data="npz:missing.npz"), ("data", "missing.npz", "does not exist")),
    "missing space file": (campaign(space="missing-space.yaml"), ("space", "missing-space.yaml", "available")),
}

SPEC_CASES = {
    **HOSTILE_YAML,
    "billion laughs": (spec(name="x").replace("name: x", f"name: {laughs(6)}"),
                       ("more than 100,000 values", "aliases")),
    # unknown keys
    "unknown top-level key": (spec(colour="red"), ("unknown key", "colour", "allowed keys", "stem_channels")),
    "unknown stage key": (stage(0, dilation=2), ("stage 1", "unknown key", "dilation", "kernel_size")),
    # wrong types
    "string layers": (stage(0, num_layers="2"), ("stage 1", "num_layers", "[1, 100]", "'2'")),
    "float layers": (stage(1, num_layers=2.0), ("stage 2", "num_layers", "[1, 100]", "2.0")),
    "bool stride": (spec(stem_stride=True), ("stem_stride", "one of (1, 2)", "True")),
    "float kernel": (stage(2, kernel_size=3.0), ("stage 3", "kernel_size", "one of (3, 5, 7)", "3.0")),
    "mapping for the stage list": (spec(stages={"a": 1}), ("stages", "list")),
    "list for a stage": (spec(stages=[[1, 2]]), ("stage 1", "mapping")),
    "list for the name": (spec(name=["x"]), ("name must be a string",)),
    # huge values
    "10^9 layers": (stage(0, num_layers=10**9), ("stage 1", "num_layers", "[1, 100]", "1000000000")),
    "10^9 channels": (stage(3, out_channels=10**9), ("stage 4", "out_channels", "[1, 16384]")),
    "10^6 head channels": (spec(head_channels=10**6), ("head_channels", "[1, 16384]")),
    "expansion 1000": (stage(0, expand_ratio=1000), ("stage 1", "expand_ratio", "[1, 16]")),
    "10^6 px images": (spec(train_image_size=10**6), ("train_image_size", "[1, 4096]")),
    "33 stages": (spec(stages=[presets.get("tiny").to_dict()["stages"][0]] * 33), ("stages", "1 to 32", "got 33")),
    # negative and zero sizes
    "negative channels": (stage(0, out_channels=-8), ("stage 1", "out_channels", "got -8")),
    "zero stem channels": (spec(stem_channels=0), ("stem_channels", "[1, 16384]", "got 0")),
    "zero layers": (stage(3, num_layers=0), ("stage 4", "num_layers", "got 0")),
    "negative image size": (spec(eval_image_size=-32), ("eval_image_size", "[1, 4096]")),
    "no stages": (spec(stages=[]), ("stages", "non-empty")),
    # NaN and infinity
    "NaN dropout": (spec(dropout=math.nan), ("dropout", "[0.0, 1.0)", "nan")),
    "infinite bn_eps": (spec(bn_eps=math.inf), ("bn_eps", "inf")),
    "minus infinite drop path": (spec(drop_path_rate=-math.inf), ("drop_path_rate", "-inf")),
    "NaN squeeze-excitation": (stage(1, se_ratio=math.nan), ("stage 2", "se_ratio", "nan")),
}

# Each spec command, with outputs inside the working directory (the pre-existing keep.yaml with --force for scale).
SPEC_COMMANDS = {
    "show": ["show", "spec.yaml", "--json"],
    "train": ["train", "spec.yaml", "--epochs", "1", "--device", "cpu", "--save", "saved", "--checkpoint", "run.pt"],
    "scale": ["scale", "spec.yaml", "--width", "1.1", "-o", "keep.yaml", "--force"],
    "bench": ["bench", "spec.yaml", "--device", "cpu", "--batch-size", "2"],
}

# Outputs outside the working directory (WORK) are the user's to choose; OUTSIDE is a directory beside it.
# (argv, the file or directory written)
OUTSIDE_OUTPUTS = {
    "-o ../": (["scale", "tiny", "--width", "1.1", "-o", "../outside/b.yaml"], "outside/b.yaml"),
    "-o absolute": (["scale", "tiny", "--width", "1.1", "-o", "{outside}/new/b.yaml"], "outside/new/b.yaml"),
    "-o through a directory symlink": (["scale", "tiny", "--width", "1.1", "-o", "link-dir/c.yaml"],
                                       "outside/c.yaml"),
    "--family -o ../": (["scale", "tiny", "--family", "2", "-o", "../outside/family"], "outside/family/tiny-phi2.yaml"),
}

# Spec names that would not name a --family file directly inside -o DIR.
UNSAFE_SPEC_NAMES = {"parent directories": "../../x", "absolute": "{outside}/x", "subdirectory": "sub/x"}


# --- harness ------------------------------------------------------------------------------------------------------


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory WORK holding keep.yaml, with OUTSIDE (holding keep.yaml too) beside it.

    Ray, data loading, training and benchmarking raise if reached: a refused command must stop before them.
    """
    directory, outside = tmp_path / "work", tmp_path / "outside"
    directory.mkdir()
    outside.mkdir()
    (directory / "keep.yaml").write_bytes(KEEP)
    (outside / "keep.yaml").write_bytes(KEEP)
    monkeypatch.chdir(directory)

    def tripwire(what: str):
        def reached(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"a refused command reached {what}")
        return reached

    monkeypatch.setattr(ray, "init", tripwire("ray.init"))
    monkeypatch.setattr(nas.ray_head.LocalHead, "start", tripwire("a local Ray head"))
    monkeypatch.setattr(nas.local, "load_data", tripwire("the campaign's data loading"))
    monkeypatch.setattr(nas.data, "load_data", tripwire("data loading"))
    monkeypatch.setattr(nas.train, "train_and_evaluate", tripwire("training"))
    monkeypatch.setattr(nas.measure, "benchmark_spec", tripwire("benchmarking"))
    return directory


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every path under ``directory`` with its bytes (None for directories, the target for symlinks)."""
    state: dict[str, bytes | None] = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_symlink():
            state[name] = str(path.readlink()).encode()
        else:
            state[name] = None if path.is_dir() else path.read_bytes()
    return state


def assert_refused(capsys: pytest.CaptureFixture[str], argv: list[str], command: str, words: tuple[str, ...]) -> str:
    """Runs ``nas ARGV`` in-process; asserts exit status 2, one stderr line naming ``words``, nothing on stdout."""
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == EXIT_USAGE, (status, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert out == "", out
    assert err.startswith(f"nas {command}: error: "), err
    assert len(err.splitlines()) == 1, f"expected one line, got {err!r}"
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    return err


def assert_nothing_happened(tmp_path: Path, before: dict[str, bytes | None]) -> None:
    assert snapshot(tmp_path) == before, "a refused command wrote, removed or changed a file"
    assert not (tmp_path / "work" / "runs").exists() and not list(tmp_path.rglob("*.db"))
    assert not (tmp_path / "work" / "pwned").exists(), "a YAML tag ran a command"
    assert not ray.is_initialized()


# --- the matrix ---------------------------------------------------------------------------------------------------


def test_the_base_inputs_are_accepted(capsys, work):
    """The cases differ from these in the one named way, so each refusal is for the reason its case states."""
    CampaignConfig.from_dict(yaml.safe_load(campaign())).check_inputs()
    (work / "spec.yaml").write_text(spec(), encoding="utf-8")
    assert main(["show", "spec.yaml"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("command, reached", [("train", "data loading"), ("bench", "benchmarking")])
def test_the_tripwires_fire_for_input_that_is_not_refused(work, command, reached):
    (work / "spec.yaml").write_text(spec(), encoding="utf-8")
    with pytest.raises(AssertionError, match=f"reached {reached}"):
        main(SPEC_COMMANDS[command])


@pytest.mark.parametrize("case", list(CAMPAIGN_CASES))
def test_hostile_campaign_files_are_refused(capsys, tmp_path, work, case):
    text, words = CAMPAIGN_CASES[case]
    (work / "campaign.yaml").write_text(text, encoding="utf-8")
    before = snapshot(tmp_path)

    assert_refused(capsys, ["search", "--config", "campaign.yaml", "--export", "keep.yaml"], "search", words)

    assert_nothing_happened(tmp_path, before)


@pytest.mark.parametrize("command", list(SPEC_COMMANDS))
@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_hostile_spec_files_are_refused(capsys, tmp_path, work, case, command):
    text, words = SPEC_CASES[case]
    (work / "spec.yaml").write_text(text, encoding="utf-8")
    before = snapshot(tmp_path)

    assert_refused(capsys, SPEC_COMMANDS[command], command, ("spec.yaml", *words))

    assert_nothing_happened(tmp_path, before)


@pytest.mark.parametrize("what", ["spec", "campaign"])
def test_a_file_that_is_not_utf8_is_refused(capsys, tmp_path, work, what):
    (work / "input.yaml").write_bytes(b"\xff\xfe\x00binary")
    before = snapshot(tmp_path)
    argv = ["show", "input.yaml"] if what == "spec" else ["search", "--config", "input.yaml"]

    assert_refused(capsys, argv, argv[0], ("input.yaml", "UTF-8"))

    assert_nothing_happened(tmp_path, before)


@pytest.mark.parametrize("case", list(OUTSIDE_OUTPUTS))
def test_outputs_outside_the_working_directory_are_the_users_to_choose(capsys, tmp_path, work, case):
    argv, written = OUTSIDE_OUTPUTS[case]
    argv = [arg.format(outside=tmp_path / "outside") for arg in argv]
    (work / "link-dir").symlink_to(tmp_path / "outside", target_is_directory=True)

    assert main(argv) == 0, capsys.readouterr().err

    assert (tmp_path / written).is_file() and (tmp_path / "outside" / "keep.yaml").read_bytes() == KEEP


def test_an_existing_output_anywhere_needs_force_and_a_file_symlink_is_replaced_not_followed(capsys, tmp_path, work):
    outside_keep = tmp_path / "outside" / "keep.yaml"
    (work / "link-file.yaml").symlink_to(outside_keep)
    before = snapshot(tmp_path)
    for output in (str(outside_keep), "link-file.yaml"):
        assert_refused(capsys, ["scale", "tiny", "--width", "1.1", "-o", output], "scale", (output, "--force"))
    assert_nothing_happened(tmp_path, before)

    assert main(["scale", "tiny", "--width", "1.1", "-o", "link-file.yaml", "--force"]) == 0
    assert not (work / "link-file.yaml").is_symlink() and (work / "link-file.yaml").read_text().startswith("name:")
    assert outside_keep.read_bytes() == KEEP  # the link was replaced by the file, its target left alone


@pytest.mark.parametrize("argv, words", [
    (["scale", "tiny", "--width", "1.1", "-o", "keep.yaml/x.yaml"], ("-o", "keep.yaml is not a directory")),
    (["train", "tiny", "--save", "keep.yaml"], ("--save", "keep.yaml", "must be a directory")),
    (["search", "--config", "campaign.yaml", "--export", "keep.yaml/best.yaml"], ("--export", "not a directory")),
])
def test_an_output_under_a_file_is_refused_before_any_work(capsys, tmp_path, work, argv, words):
    (work / "campaign.yaml").write_text(campaign(), encoding="utf-8")
    before = snapshot(tmp_path)

    assert_refused(capsys, argv, argv[0], words)

    assert_nothing_happened(tmp_path, before)


@pytest.mark.parametrize("case", list(UNSAFE_SPEC_NAMES))
def test_family_file_names_from_the_spec_name_stay_in_the_output_directory(capsys, tmp_path, work, case):
    name = UNSAFE_SPEC_NAMES[case].format(outside=tmp_path / "outside")
    (work / "spec.yaml").write_text(spec(name=name), encoding="utf-8")
    (work / "family").mkdir()
    (work / "family" / "sub").mkdir()
    before = snapshot(tmp_path)

    assert_refused(capsys, ["scale", "spec.yaml", "--family", "2", "-o", "family", "--force"], "scale",
                   ("spec name", repr(name), "-o family"))

    assert_nothing_happened(tmp_path, before)
    assert not (work / "family" / f"{name}-phi1.yaml").exists()


def test_output_paths_inside_the_working_directory_are_written(capsys, work):
    (work / "sub").mkdir()
    (work / "link").symlink_to(work / "sub", target_is_directory=True)

    for output in ("sub/../inside.yaml", "link/through-link.yaml", str(work / "absolute.yaml")):
        assert main(["scale", "tiny", "--width", "1.1", "-o", output]) == 0, capsys.readouterr().err
    capsys.readouterr()

    assert (work / "inside.yaml").is_file() and (work / "sub" / "through-link.yaml").is_file()
    assert (work / "absolute.yaml").is_file() and (work / "keep.yaml").read_bytes() == KEEP


def test_scale_force_still_overwrites_inside_and_only_with_force(capsys, work):
    err = assert_refused(capsys, ["scale", "tiny", "--width", "1.1", "-o", "keep.yaml"], "scale",
                         ("keep.yaml", "--force"))
    assert "exists" in err and (work / "keep.yaml").read_bytes() == KEEP

    assert main(["scale", "tiny", "--width", "1.1", "-o", "keep.yaml", "--force"]) == 0, capsys.readouterr().err
    assert (work / "keep.yaml").read_bytes() != KEEP


# --- as a user runs it: a separate process ------------------------------------------------------------------------


def nas_process(cwd: Path, *argv: str, memory_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m nas ARGV`` in ``cwd``; with ``memory_limit``, the process's address space is capped (bytes)."""
    command = [sys.executable, "-m", "nas", *argv]
    if memory_limit is not None:
        command = [sys.executable, "-c",
                   "import resource, runpy, sys\n"
                   f"resource.setrlimit(resource.RLIMIT_AS, ({memory_limit}, {memory_limit}))\n"
                   "sys.argv = ['nas', *sys.argv[1:]]\n"
                   "runpy.run_module('nas', run_name='__main__', alter_sys=True)\n", *argv]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def assert_refused_in_a_process(result: subprocess.CompletedProcess[str], command: str, *words: str) -> None:
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nas {command}: error: "), result.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def test_a_campaign_whose_yaml_tag_runs_a_command_is_refused_in_a_process(tmp_path):
    (tmp_path / "campaign.yaml").write_text(
        campaign().replace("space: tiny", 'space: !!python/object/apply:os.system ["touch pwned"]'), encoding="utf-8"
    )
    before = snapshot(tmp_path)

    result = nas_process(tmp_path, "search", "--config", "campaign.yaml")

    assert_refused_in_a_process(result, "search", "campaign.yaml", "not valid YAML", "python/object/apply")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "runs").exists()
    assert snapshot(tmp_path) == before


def test_a_billion_laughs_spec_is_refused_in_a_process_within_bounded_memory(tmp_path):
    """10^10 values once expanded; refused in a process that may not grow beyond 8 GiB of address space."""
    (tmp_path / "spec.yaml").write_text(spec(name="x").replace("name: x", f"name: {laughs(9)}"), encoding="utf-8")

    result = nas_process(tmp_path, "show", "spec.yaml", memory_limit=8 << 30)

    assert_refused_in_a_process(result, "show", "spec.yaml", "more than 100,000 values", "aliases")


def test_an_output_outside_the_working_directory_is_written_in_a_process(tmp_path):
    (tmp_path / "work").mkdir()

    result = nas_process(tmp_path / "work", "scale", "tiny", "--width", "1.1", "-o", "../b.yaml")

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b.yaml").read_text().startswith("name:")


# --- yaml.safe_load only ------------------------------------------------------------------------------------------

_UNSAFE_NAMES = r"(?:load|load_all|full_load|full_load_all|unsafe_load|unsafe_load_all|Loader|FullLoader|UnsafeLoader)"
UNSAFE_YAML = re.compile(
    rf"\byaml\s*\.\s*{_UNSAFE_NAMES}\b"  # yaml.load(...), yaml.FullLoader
    rf"|\bfrom\s+yaml\s+import\b.*\b{_UNSAFE_NAMES}\b"  # from yaml import load
    r"|\bLoader\s*="  # any Loader= argument: safe_load needs none
)
SCANNED_PACKAGES = ("nas", "search_spaces", "rewards")


@pytest.mark.parametrize("line, unsafe", [
    ("data = yaml.load(text)", True), ("data = yaml.unsafe_load(text)", True), ("yaml.full_load(text)", True),
    ("yaml.load_all(text, Loader=yaml.FullLoader)", True), ("yaml.load(text, Loader=yaml.SafeLoader)", True),
    ("from yaml import unsafe_load", True), ("from yaml import safe_load, load", True),
    ("return yaml.safe_load(text)", False), ("yaml.safe_dump(data)", False), ("spec = load_spec(path)", False),
    ("from yaml import safe_load", False), ("except yaml.YAMLError:", False),
])
def test_the_unsafe_yaml_pattern_catches_what_it_should(line, unsafe):
    assert bool(UNSAFE_YAML.search(line)) is unsafe


def test_only_yaml_safe_load_is_used():
    files = [path for package in SCANNED_PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 20, "the scan found too few files to be looking in the right place"
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if UNSAFE_YAML.search(line)
    ]
    assert offending == [], "YAML must be read with yaml.safe_load only:\n" + "\n".join(offending)


# --- reports and YAML (issue 11) ---

# A key given twice in one mapping, at any depth of each kind of file: (kind, file text, the key).
DUPLICATE_KEY_CASES = {
    "campaign, top level": ("campaign", campaign() + "trials: 8\n", "trials"),
    "campaign, train mapping": ("campaign", campaign() + "  epochs: 2\n", "epochs"),
    "spec, top level": ("spec", spec() + "name: again\n", "name"),
    "spec, a stage": ("spec", spec().replace("  num_layers: 1\n", "  num_layers: 1\n  num_layers: 2\n", 1),
                      "num_layers"),
    "space, top level": ("space", (presets.PRESET_DIR / "tiny-space.yaml").read_text(encoding="utf-8")
                         + "backbone: tiny\n", "backbone"),
}


def key_lines(text: str, key: str) -> tuple[int, int]:
    """The numbers of the first two lines that give ``key`` (in a block mapping or as a list item's first key)."""
    lines = [number for number, line in enumerate(text.splitlines(), start=1)
             if re.match(rf"\s*(- )?{key}:", line)]
    return lines[0], lines[1]


@pytest.mark.parametrize("case", list(DUPLICATE_KEY_CASES))
def test_a_duplicate_key_is_refused_naming_the_key_and_its_line(capsys, tmp_path, work, case):
    kind, text, key = DUPLICATE_KEY_CASES[case]
    first, second = key_lines(text, key)
    name = {"campaign": "campaign.yaml", "spec": "spec.yaml", "space": "space.yaml"}[kind]
    (work / name).write_text(text, encoding="utf-8")
    if kind == "space":
        (work / "campaign.yaml").write_text(campaign(space="space.yaml"), encoding="utf-8")
    argv = SPEC_COMMANDS["show"] if kind == "spec" else ["search", "--config", "campaign.yaml", "--export", "keep.yaml"]
    before = snapshot(tmp_path)

    assert_refused(capsys, argv, argv[0],
                   (name, "not valid YAML", f"duplicate key '{key}' at line {second}, first given at line {first}"))

    assert_nothing_happened(tmp_path, before)


# --- data sources (issue 11) ---
# Bad data files are refused by `nas search` from check_source (headers, listings) before data loading, Ray or a
# study, and by `nas train` in a separate process from load_data, one line each.


def forged_npz(path: Path, images_shape: tuple[int, ...]) -> Path:
    """An npz whose images header claims ``images_shape`` (uint8) over no data at all: a few hundred bytes."""
    members = {"images.npy": {"descr": "|u1", "fortran_order": False, "shape": images_shape},
               "labels.npy": {"descr": "<i8", "fortran_order": False, "shape": images_shape[:1]}}
    with zipfile.ZipFile(path, "w") as archive:
        for name, header in members.items():
            buffer = io.BytesIO()
            np.lib.format.write_array_header_1_0(buffer, header)
            archive.writestr(name, buffer.getvalue())
    return path


def npz_with_labels(path: Path, labels: np.ndarray) -> Path:
    images = (np.arange(len(labels) * 64) % 251).astype(np.uint8).reshape(-1, 8, 8)
    np.savez(path, images=images, labels=labels)
    return path


def bomb_folder(directory: Path) -> Path:
    """An image folder with two real classes and one PNG whose header claims 60000x60000 pixels."""
    for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 128, 255))):
        (directory / name).mkdir(parents=True)
        for number in range(2):
            Image.new("RGB", (12, 12), colour).save(directory / name / f"{number}.png")
    bomb = bytearray((directory / "cat" / "0.png").read_bytes())
    bomb[16:24] = struct.pack(">II", 60_000, 60_000)  # IHDR width and height
    bomb[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb[12:29])))
    (directory / "cat" / "huge.png").write_bytes(bytes(bomb))
    return directory


def npz_without_known_arrays(work: Path) -> Path:
    np.savez(work / "odd.npz", pictures=np.zeros((4, 8, 8), np.uint8), classes=np.arange(4) % 2)
    return work / "odd.npz"


UINT64_LABELS = np.array([0, 1, 2**63 + 5], np.uint64)  # cast to int64, the last one would read as negative

# Case -> (the campaign's data source, made in the working directory; words the one-line message must hold).
DATA_SOURCE_CASES = {
    "npz header claiming 10^9 images": (lambda work: f"npz:{forged_npz(work / 'forged.npz', (10**9, 28, 28))}",
                                        ("forged.npz", "(1000000000, 28, 28)", "730.2 GiB", "the limit is 64 GiB")),
    "npz labels {0, 999}": (lambda work: f"npz:{npz_with_labels(work / 'gap.npz', np.array([0, 999] * 3))}",
                            ("gap.npz", "labels 1, 2, 3", "998 missing in all", "relabel the classes as 0..K-1")),
    "npz label of 5,000,000": (lambda work: f"npz:{npz_with_labels(work / 'big.npz', np.array([0, 1, 5_000_000]))}",
                               ("big.npz", "must be below 100,000", "got 5000000")),
    "npz uint64 label 2^63+5": (lambda work: f"npz:{npz_with_labels(work / 'wide.npz', UINT64_LABELS)}",
                                ("wide.npz", "got 9223372036854775813")),
    "npz without known arrays": (lambda work: f"npz:{npz_without_known_arrays(work)}",
                                 ("odd.npz", "neither arrays 'images' and 'labels' nor Keras-style 'x_train' and "
                                  "'y_train'", "['classes', 'pictures']", "?images=NAME&labels=NAME")),
    "npz:/dev/zero": (lambda work: "npz:/dev/zero", ("/dev/zero", "is not a regular file", "character device")),
    "npz directory": (lambda work: f"npz:{work}", ("is not a regular file", "directory")),
    "unknown npz option": (lambda work: "npz:data.npz?pixels=x", ("unknown npz option 'pixels'",
                                                                  "allowed options: images, labels")),
}


@pytest.mark.parametrize("case", list(DATA_SOURCE_CASES))
def test_bad_data_sources_are_refused_before_a_search_starts(capsys, tmp_path, work, case):
    make, words = DATA_SOURCE_CASES[case]
    (work / "campaign.yaml").write_text(campaign(data=make(work)), encoding="utf-8")
    before = snapshot(tmp_path)

    assert_refused(capsys, ["search", "--config", "campaign.yaml"], "search", ("data", *words))

    assert_nothing_happened(tmp_path, before)


def test_an_npz_header_claiming_a_billion_images_is_refused_in_a_process(tmp_path):
    """numpy would try to allocate 730 GiB; the process may not grow beyond 8 GiB of address space."""
    forged_npz(tmp_path / "forged.npz", (10**9, 28, 28))

    result = nas_process(tmp_path, "train", "tiny", "--data", "npz:forged.npz", "--epochs", "1", "--device", "cpu",
                         memory_limit=8 << 30)

    assert_refused_in_a_process(result, "train", "forged.npz", "730.2 GiB", "the limit is 64 GiB")


def test_a_decompression_bomb_image_is_refused_by_name_in_a_process(tmp_path):
    bomb_folder(tmp_path / "folder")

    result = nas_process(tmp_path, "train", "tiny", "--data", "imagefolder:folder", "--image-size", "8",
                         "--epochs", "1", "--device", "cpu", memory_limit=8 << 30)

    assert_refused_in_a_process(result, "train", "huge.png", "too large to decode safely", "decompression bomb")


# --- training runs (issue 11) ---
# `nas train --resume` refuses a checkpoint it cannot continue before data loading (the tripwires), and exit 2 in a
# process for what needs the data; a checkpoint one run holds is refused to a second process, naming the holder.


RESUME = ["train", "tiny", "--epochs", "1", "--device", "cpu", "--checkpoint", "run.pt", "--resume"]


def checkpoint_file(path: Path, *, spec_changes: dict | None = None, **config: object) -> Path:
    """A checkpoint-shaped file for tiny with ``config`` (TrainConfig defaults otherwise), written without training."""
    recipe = {k: v for k, v in TrainConfig(**config).to_dict().items() if k not in ("device", "threads")}
    torch.save({"version": CHECKPOINT_VERSION, "spec": {**presets.get("tiny").to_dict(), **(spec_changes or {})},
                "config": recipe, "history": [], "model": {}, "optimizer": {}, "scheduler": None, "scaler": None,
                "ema": None, "batches": {"epoch": 1}, "mixing_rng": torch.zeros(16, dtype=torch.uint8),
                "torch_rng": torch.get_rng_state(), "cuda_rng": None}, path)
    return path


def truncated(path: Path) -> Path:
    checkpoint_file(path, epochs=1)
    path.write_bytes(path.read_bytes()[:300])
    return path


# Case -> (makes run.pt in the working directory, or leaves it missing; words the one-line message must hold).
RESUME_CASES = {
    "missing checkpoint": (lambda work: None, ("no checkpoint at run.pt", "run without --resume to start")),
    "random bytes": (lambda work: (work / "run.pt").write_bytes(os.urandom(4096)),
                     ("run.pt is not a checkpoint written by nas train",)),
    "empty file": (lambda work: (work / "run.pt").write_bytes(b""),
                   ("run.pt is not a checkpoint written by nas train",)),
    "truncated torch file": (lambda work: truncated(work / "run.pt"),
                             ("run.pt is not a checkpoint written by nas train", "damaged, truncated")),
    "a torch file of another shape": (lambda work: torch.save([torch.zeros(2)], work / "run.pt"),
                                      ("run.pt is not a checkpoint written by nas train", "holds a list")),
    "weights only": (lambda work: torch.save({"stem.0.weight": torch.zeros(16, 3, 3, 3)}, work / "run.pt"),
                     ("run.pt is not a checkpoint written by nas train", "network weights only")),
    "checkpoint of another recipe": (lambda work: checkpoint_file(work / "run.pt", epochs=4, batch_size=64),
                                     ("run.pt was written for another run", "config epochs 4 in the checkpoint, 1 now",
                                      "config batch_size 64 in the checkpoint, auto now")),
    "checkpoint of another spec": (lambda work: checkpoint_file(work / "run.pt", spec_changes={"dropout": 0.5},
                                                                epochs=1),
                                   ("run.pt was written for another run", "spec dropout 0.5 in the checkpoint")),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_a_checkpoint_that_cannot_be_resumed_is_refused_before_the_data_loads(capsys, tmp_path, work, case):
    make, words = RESUME_CASES[case]
    make(work)
    before = snapshot(tmp_path)

    assert_refused(capsys, RESUME, "train", words)

    assert_nothing_happened(tmp_path, before)  # the checkpoint is untouched and no lock file is left


def test_a_held_checkpoint_is_refused_in_process_naming_the_holder(capsys, tmp_path, work):
    checkpoint_file(work / "run.pt", epochs=1)
    with FileLock(work / "run.pt", what="checkpoint"):
        before = snapshot(tmp_path)
        for argv in (RESUME, RESUME[:-1]):
            assert_refused(capsys, argv, "train", ("checkpoint run.pt is in use by",
                                                  f"process {os.getpid()} on host {socket.gethostname()}"))
        assert_nothing_happened(tmp_path, before)


def test_a_second_train_on_one_checkpoint_is_refused_naming_the_first_process(tmp_path):
    """Two real ``nas train`` processes: the second, with or without --resume, is refused with the first's pid."""
    argv = ["train", "tiny", "--data", "synthetic:num_images=640,image_size=32", "--epochs", "10000",
            "--batch-size", "64", "--device", "cpu", "--threads", "1", "--checkpoint", "run.pt"]
    first = subprocess.Popen([sys.executable, "-m", "nas", *argv], cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run.pt").exists():  # the lock is taken first; the checkpoint after one epoch
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not write its checkpoint"
            time.sleep(0.2)
        for extra in ([], ["--resume"]):
            second = nas_process(tmp_path, *argv, *extra)
            assert_refused_in_a_process(second, "train", "checkpoint run.pt is in use by",
                                        f"process {first.pid} on host {socket.gethostname()}")
        assert first.poll() is None, "the refused runs disturbed the first"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    with FileLock(tmp_path / "run.pt", what="checkpoint"):  # the kill released the lock: nothing stale to clean up
        pass
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.pt"]  # no temporary file left by the kill


def test_a_batch_larger_than_the_training_split_is_refused_in_a_process(tmp_path):
    result = nas_process(tmp_path, "train", "tiny", "--data", "synthetic:num_images=100,image_size=32",
                         "--batch-size", "128", "--epochs", "1", "--device", "cpu", "--checkpoint", "run.pt")

    assert_refused_in_a_process(result, "train", "batch_size 128", "90 images", "after the hold-out split")
    assert list(tmp_path.iterdir()) == []


def test_a_spec_pinning_other_input_channels_than_the_data_is_refused_in_a_process(tmp_path):
    (tmp_path / "gray.yaml").write_text(spec(in_channels=1), encoding="utf-8")

    result = nas_process(tmp_path, "train", "gray.yaml", "--data", "synthetic:num_images=100,image_size=32",
                         "--batch-size", "16", "--epochs", "1", "--device", "cpu")

    assert_refused_in_a_process(result, "train", "pins in_channels 1", "has 3 channel(s)")


def test_bench_out_of_memory_is_refused_in_a_process_with_advice(tmp_path):
    """A 25.8 GB batch in a process that may not grow beyond 8 GiB of address space: the CPU allocator fails."""
    result = nas_process(tmp_path, "bench", "tiny", "--device", "cpu", "--batch-size", "8192", "--image-size", "512",
                         "--warmup", "1", "--repeats", "1", memory_limit=8 << 30)

    assert_refused_in_a_process(result, "bench", "out of memory", "tiny", "batch size 8192", "image size 512px",
                                "smaller --batch-size or --image-size")


# --- studies and campaigns (issue 11) ---


def damaged_study(directory: Path) -> Path:
    """runs/demo.db with 30 trials, then 40 KiB of random bytes over it past its header (as `dd ... seek=5`)."""
    from nas.controllers import distributions, make_sampler
    from nas.study import open_study

    space = presets.get_space("tiny")
    config = CampaignConfig(study="demo", storage=f"sqlite:///{directory}/runs/demo.db")
    study = open_study(config.study_settings(), space, make_sampler("random", space))
    for _ in range(30):
        trial = study.ask(fixed_distributions=distributions(space))
        trial.set_user_attr("note", "x" * 2000)
        study.tell(trial, 0.5)
    database = directory / "runs" / "demo.db"
    with open(database, "r+b") as file:
        file.seek(5 * 4096)
        file.write(np.random.default_rng(0).bytes(10 * 4096))
    return database


@pytest.mark.parametrize("command", [["trials"], ["best"], ["export"], ["report", "-o", "report"]])
def test_a_damaged_database_is_one_line_for_every_read_command_in_a_process(tmp_path, command):
    database = damaged_study(tmp_path)
    before = snapshot(tmp_path)

    result = nas_process(tmp_path, *command, "--study", "demo")

    assert_refused_in_a_process(result, command[0], "runs/demo.db", "restore it from a backup")
    assert snapshot(tmp_path) == before and database.exists()


@pytest.mark.parametrize("command", [["trials"], ["best"], ["export"], ["report"]])
def test_a_read_command_on_a_missing_study_creates_nothing(capsys, tmp_path, work, command):
    before = snapshot(tmp_path)

    assert_refused(capsys, [*command, "--study", "typo"], command[0], ("no study database runs/typo.db",))
    assert_refused(capsys, [*command, "--study", "typo", "--storage", "journal:runs/typo.journal"], command[0],
                   ("no journal file runs/typo.journal",))

    assert_nothing_happened(tmp_path, before)


def test_a_password_never_shows_in_messages(capsys, tmp_path, work):
    (work / "campaign.yaml").write_text(campaign(), encoding="utf-8")
    before = snapshot(tmp_path)

    err = assert_refused(capsys, ["trials", "--study", "x", "--storage", "postgresql+nosuchdriver://u:pa/ss@h/db"],
                         "trials", ("u:***@h",))
    assert "pa/ss" not in err

    assert_nothing_happened(tmp_path, before)


def test_a_batch_larger_than_the_training_set_is_refused_before_ray(capsys, tmp_path, work):
    (work / "campaign.yaml").write_text(campaign_train(batch_size=600), encoding="utf-8")
    before = snapshot(tmp_path)

    assert_refused(capsys, ["search", "--config", "campaign.yaml"], "search",
                   ("train.batch_size 600", "576 training images", "val_fraction 0.1", "at most 576"))

    assert_nothing_happened(tmp_path, before)


def test_a_space_pinning_other_input_channels_than_the_data_is_refused_before_ray(capsys, tmp_path, work):
    backbone = yaml.safe_load(spec(in_channels=1))
    (work / "gray-space.yaml").write_text(yaml.safe_dump({"name": "gray", "backbone": backbone, "stages": [
        {"num_layers": {"min": 1, "max": 2}}] * 4}), encoding="utf-8")
    (work / "campaign.yaml").write_text(campaign(space="gray-space.yaml"), encoding="utf-8")
    before = snapshot(tmp_path)

    assert_refused(capsys, ["search", "--config", "campaign.yaml"], "search",
                   ("space", "pins in_channels 1", "has 3 channel(s)"))

    assert_nothing_happened(tmp_path, before)
