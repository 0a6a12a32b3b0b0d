"""Bad input matrix: hostile campaign files, spec files and output paths, run through the real ``nas`` command.

Every case must be refused with exit status 2 and one line on stderr that names the bad field (and the allowed
values where there are some), without a traceback, and with nothing written or executed: the working directory
(and a directory beside it) is byte-for-byte what it was, so no ``runs/``, no study database, no ``pwned`` file
from a YAML tag and an untouched pre-existing output file; and Ray, data loading, training and benchmarking are
tripwires that fail the test if they are reached.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

import nas.data
import nas.measure
import nas.runner
import nas.train
from nas.campaign import CampaignConfig
from nas.cli import EXIT_USAGE, main
from search_spaces import presets
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
    "negative learning rate": (campaign_train(learning_rate=-0.1), ("learning_rate", "[0.0, 1000000.0]")),
    # NaN and infinity, as YAML writes them (.nan, .inf)
    "NaN val_fraction": (campaign(val_fraction=math.nan), ("val_fraction", "(0, 0.5]", "nan")),
    "NaN learning rate": (campaign_train(learning_rate=math.nan), ("learning_rate", "nan")),
    "infinite GPUs": (campaign(gpus_per_trial=math.inf), ("gpus_per_trial", "inf")),
    "infinite warm-up": (campaign_train(warmup_epochs=math.inf), ("warmup_epochs", "[0.0, 10000.0]", "inf")),
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

# Outputs outside the working directory (WORK); OUTSIDE is a directory beside it. (argv, words)
OUTSIDE_OUTPUTS = {
    "-o ../": (["scale", "tiny", "--width", "1.1", "-o", "../outside/b.yaml"], ("-o", "../outside/b.yaml")),
    "-o absolute": (["scale", "tiny", "--width", "1.1", "-o", "{outside}/b.yaml"], ("-o", "outside/b.yaml")),
    "-o through a directory symlink": (["scale", "tiny", "--width", "1.1", "-o", "link-dir/b.yaml"],
                                       ("-o", "link-dir/b.yaml")),
    "-o onto a file symlink, --force": (["scale", "tiny", "--width", "1.1", "-o", "link-file.yaml", "--force"],
                                        ("-o", "link-file.yaml")),
    "--family -o ../": (["scale", "tiny", "--family", "2", "-o", "../outside/family"], ("-o", "../outside/family")),
    "--search-coefficients -o ../": (["scale", "tiny", "--search-coefficients", "--data", "synthetic:num_images=64",
                                      "--epochs", "1", "-o", "../outside/searched"], ("-o", "../outside/searched")),
    "export -o ../": (["export", "--study", "hostile", "-o", "../outside/winner.yaml"], ("-o", "../outside/winner")),
    "search --export ../": (["search", "--config", "campaign.yaml", "--export", "../outside/best.yaml"],
                            ("--export", "../outside/best.yaml")),
    "train --save ../": (["train", "tiny", "--epochs", "1", "--device", "cpu", "--save", "../outside/saved"],
                         ("--save", "../outside/saved")),
    "train --checkpoint ../": (["train", "tiny", "--epochs", "1", "--device", "cpu", "--checkpoint",
                                "../outside/run.pt"], ("--checkpoint", "../outside/run.pt")),
    "train --export-onnx ../": (["train", "tiny", "--epochs", "1", "--device", "cpu", "--save", "saved",
                                 "--export-onnx", "../outside/model.onnx"], ("--export-onnx", "../outside/model.onnx")),
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
    monkeypatch.setattr(nas.runner, "load_data", tripwire("the campaign's data loading"))
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
def test_outputs_outside_the_working_directory_are_refused(capsys, tmp_path, work, case):
    argv, words = OUTSIDE_OUTPUTS[case]
    argv = [arg.format(outside=tmp_path / "outside") for arg in argv]
    (work / "campaign.yaml").write_text(campaign(), encoding="utf-8")
    (work / "link-dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (work / "link-file.yaml").symlink_to(tmp_path / "outside" / "keep.yaml")
    before = snapshot(tmp_path)

    err = assert_refused(capsys, argv, argv[0], (*words, "is outside the working directory", str(work.resolve())))

    assert "write inside it" in err
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
    """The rule refuses only what leaves the working directory: ``..`` that stays inside and inner symlinks pass."""
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


def test_an_output_outside_the_working_directory_is_refused_in_a_process(tmp_path):
    (tmp_path / "work").mkdir()
    before = snapshot(tmp_path)

    result = nas_process(tmp_path / "work", "scale", "tiny", "--width", "1.1", "-o", "../b.yaml")

    assert_refused_in_a_process(result, "scale", "-o", "../b.yaml", "outside the working directory")
    assert snapshot(tmp_path) == before


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
