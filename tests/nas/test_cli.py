"""The ``nas`` command, run in-process: what it prints for good input, and how it refuses bad input.

Bad input (an unknown key, a kernel of 4, an expansion of 0, a stage with no layers, a space whose total stride
exceeds its image size, a missing file) must exit with status 2 and one line on stderr that names the problem,
never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import optuna
import pytest
import yaml

from nas.cli import EXIT_USAGE, main
from nas.measure import spec_complexity
from nas.step_cache import CACHE_STUDY
from search_spaces import presets
from search_spaces.io import dump_spec, load_spec, spec_from_yaml
from search_spaces.spec import ArchSpec, StageSpec

# EfficientNetV2 Table 4: the six stages of EfficientNetV2-S.
EFFICIENTNETV2_S_BLOCKS = (
    "fused_r2_k3_s1_e1_c24",
    "fused_r4_k3_s2_e4_c48",
    "fused_r4_k3_s2_e4_c64",
    "mb_r6_k3_s2_e4_c128_se0.25",
    "mb_r9_k3_s1_e6_c160_se0.25",
    "mb_r15_k3_s2_e6_c256_se0.25",
)
EFFICIENTNETV2_S_PARAMETERS = 21_458_488  # timm / torchvision tf_efficientnetv2_s, 1000 classes
EFFICIENTNET_B0_PARAMETERS = 5_288_548  # EfficientNet Table 2 (5.3M); timm efficientnet_b0
EFFICIENTNET_B0_MACS = 0.386e9  # EfficientNet Table 2: 0.39B FLOPs (multiply-adds)
EFFICIENTNET_B4_PARAMETERS = 19_341_616  # EfficientNet Table 2 (19M); timm efficientnet_b4
# The tiny space: ops {mbconv, fused} x kernels {3, 5} x expansions {1, 4, 6}, times layers {1-2, 1-2, 1-3, 1-3}.
TINY_SPACE_SIZE = (2 * 2 * 2 * 3) ** 2 * (2 * 3 * 2 * 3) ** 2
TINY_NUM_STAGES = 4


@pytest.fixture(autouse=True)
def work_in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own working directory: commands write only inside it (``-o``, ``--save``, ...)."""
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """Runs ``nas ARGV`` in-process; returns the exit status, stdout and stderr."""
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_refused(status: int, out: str, err: str, command: str, *words: str) -> None:
    """Exit status 2, one line on stderr naming the command and every word of ``words``, no traceback."""
    assert status == EXIT_USAGE, (status, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert err.startswith(f"nas {command}: error: "), err
    first_line = err.splitlines()[0]
    assert err.strip() == first_line, f"expected one line, got {err!r}"
    for word in words:
        assert word in first_line, f"{word!r} not in {first_line!r}"


def candidate_lines(out: str) -> list[list[str]]:
    """The lines of ``nas space --sample`` output that consist only of parseable block strings."""
    lines = []
    for line in out.splitlines():
        tokens = line.split()
        if tokens and all(_is_block_string(token) for token in tokens):
            lines.append(tokens)
    return lines


def _is_block_string(token: str) -> bool:
    try:
        StageSpec.from_block_string(token)
    except ValueError:
        return False
    return True


# --- show ---------------------------------------------------------------------------------------------------------


def test_show_preset_prints_stage_table_and_parameters(capsys):
    status, out, err = run(capsys, "show", "efficientnetv2-s")

    assert status == 0, err
    assert err == ""
    lines = out.splitlines()
    for index, block in enumerate(EFFICIENTNETV2_S_BLOCKS, start=1):
        rows = [line for line in lines if re.match(rf"{index}\s+{re.escape(block)}\s", line)]
        assert len(rows) == 1, f"no table row for stage {index} {block}:\n{out}"
    assert any(line.startswith("stem") for line in lines)
    assert any(line.startswith("head") for line in lines)
    assert f"parameters: {EFFICIENTNETV2_S_PARAMETERS:,}" in out
    assert "384x384" in out  # FLOPs are counted at the eval image size


def test_show_json_reports_reference_complexity_and_round_trips_the_spec(capsys):
    status, out, err = run(capsys, "show", "efficientnet-b0", "--json")

    assert status == 0, err
    report = json.loads(out)
    assert report["parameters"] == EFFICIENTNET_B0_PARAMETERS
    assert report["macs"] == pytest.approx(EFFICIENTNET_B0_MACS, rel=0.01)
    assert report["image_size"] == 224
    assert report["num_classes"] == 1000
    spec = ArchSpec.from_dict(report["spec"])
    assert spec == presets.get("efficientnet-b0")
    assert report["block_strings"] == list(spec.block_strings)
    assert len(report["stage_parameters"]) == len(spec.stages) == 7
    assert 0 < sum(report["stage_parameters"]) < report["parameters"]


def test_show_num_classes_changes_only_the_classifier(capsys):
    reports = {}
    for num_classes in (10, 1000):
        status, out, err = run(capsys, "show", "tiny", "--json", "--num-classes", num_classes)
        assert status == 0, err
        reports[num_classes] = json.loads(out)
        assert reports[num_classes]["num_classes"] == num_classes

    head_channels = presets.get("tiny").head_channels
    # The classifier is a Linear(head_channels, num_classes) with bias; nothing else depends on num_classes.
    assert reports[1000]["parameters"] - reports[10]["parameters"] == (1000 - 10) * (head_channels + 1)
    assert reports[1000]["stage_parameters"] == reports[10]["stage_parameters"]


def test_show_says_which_number_of_classes_the_parameters_are_for(capsys):
    """A search prints candidates' parameters for its data's classes; nas show says its count is for ImageNet's
    1000 unless --num-classes says otherwise (issue 15)."""
    head_channels = presets.get("tiny").head_channels
    status, out, err = run(capsys, "show", "tiny")
    assert status == 0, err
    line = next(line for line in out.splitlines() if line.startswith("parameters: "))
    assert "for 1000 classes (ImageNet's, the default; --num-classes N" in line
    status, out, err = run(capsys, "show", "tiny", "--num-classes", 10)
    assert status == 0, err
    ten = next(line for line in out.splitlines() if line.startswith("parameters: "))
    parameters = {count: int(text.split()[1].replace(",", "")) for count, text in ((1000, line), (10, ten))}
    assert ten.endswith("for 10 classes (--num-classes 10)")
    assert parameters[1000] - parameters[10] == (1000 - 10) * (head_channels + 1)
    show_help = " ".join(_command_parsers()["show"].format_help().split())
    assert ("--num-classes N classifier outputs the parameter count is for (default: the classes the spec was "
            "searched or trained on, else 1000, ImageNet's" in show_help)


def test_show_counts_without_importing_torch():
    """nas show counts parameters and FLOPs from the spec (nas.complexity): no torch, a fast start."""
    import subprocess
    import sys

    code = ("import contextlib, io, sys\nfrom nas.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['show', 'efficientnetv2-s']) == 0\n"
            "print(sorted(m for m in ('torch', 'ray', 'matplotlib', 'optuna', 'pandas') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_show_spec_file_works_like_the_preset(capsys, tmp_path):
    path = tmp_path / "b0.yaml"
    dump_spec(presets.get("efficientnet-b0"), path)

    from_file = run(capsys, "show", path)
    from_preset = run(capsys, "show", "efficientnet-b0")
    assert from_file[0] == 0, from_file[2]
    assert from_file == from_preset

    status, out, err = run(capsys, "show", path, "--json")
    assert status == 0, err
    assert json.loads(out)["parameters"] == EFFICIENTNET_B0_PARAMETERS


def test_show_counts_for_the_classes_and_channels_a_spec_was_searched_on_unless_told_otherwise(capsys, tmp_path):
    """Issue 28: a winner searched on 10 classes was shown with ImageNet's 1000-class classifier; a spec that records
    its classes is counted for them, and an explicit --num-classes still wins."""
    from nas.complexity import count_spec

    searched = dataclasses.replace(presets.get("tiny"), num_classes=10, in_channels=1)
    dump_spec(searched, tmp_path / "winner.yaml")
    status, out, err = run(capsys, "show", tmp_path / "winner.yaml", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert (report["num_classes"], report["in_channels"]) == (10, 1)
    assert report["parameters"] == count_spec(presets.get("tiny"), num_classes=10, in_channels=1).parameters
    assert ArchSpec.from_dict(report["spec"]) == searched
    status, out, err = run(capsys, "show", tmp_path / "winner.yaml")
    assert status == 0, err
    line = next(line for line in out.splitlines() if line.startswith("parameters: "))
    assert line == (f"parameters: {report['parameters']:,} for 10 classes (the spec's: those it was searched or "
                    "trained on; --num-classes N counts for N)")
    assert "1 input channel(s)" in out
    status, out, err = run(capsys, "show", tmp_path / "winner.yaml", "--json", "--num-classes", 1000)
    assert status == 0, err
    explicit = json.loads(out)
    assert explicit["num_classes"] == 1000
    assert explicit["parameters"] == count_spec(presets.get("tiny"), num_classes=1000, in_channels=1).parameters
    status, out, err = run(capsys, "show", tmp_path / "winner.yaml", "--num-classes", 1000)
    assert "for 1000 classes (not the 10 the spec was searched or trained on: --num-classes 10 counts" in out


def test_no_command_prints_usage_and_fails(capsys):
    status, out, _ = run(capsys)

    assert status == EXIT_USAGE
    assert "usage: nas" in out
    for command in ("show", "scale", "space"):
        assert command in out


def test_missing_argument_is_an_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["show"])
    assert exit_info.value.code == EXIT_USAGE
    assert "SPEC_OR_PRESET" in capsys.readouterr().err


# --- scale --------------------------------------------------------------------------------------------------------


def test_scale_b0_to_b4_writes_a_spec_with_the_reference_parameter_count(capsys, tmp_path):
    output = tmp_path / "b4.yaml"

    status, out, err = run(capsys, "scale", "efficientnet-b0", "--width", "1.4", "--depth", "1.8", "-o", output)

    assert status == 0, err
    spec = load_spec(output)
    assert spec_complexity(spec).parameters == EFFICIENTNET_B4_PARAMETERS
    assert f"parameters: {EFFICIENTNET_B4_PARAMETERS:,}" in out
    assert f"wrote {output}" in out
    # B0's stages have 1, 2, 2, 3, 3, 4, 1 layers; ceil(1.8 n) gives 2, 4, 4, 6, 6, 8, 2: B4's 32 blocks.
    assert spec.num_blocks == 32
    assert [path.name for path in tmp_path.iterdir()] == ["b4.yaml"], "a temporary file was left behind"


def test_scale_without_output_prints_the_same_spec_as_yaml(capsys, tmp_path):
    output = tmp_path / "b4.yaml"
    status, _, err = run(capsys, "scale", "efficientnet-b0", "--width", "1.4", "--depth", "1.8", "-o", output)
    assert status == 0, err

    status, out, err = run(capsys, "scale", "efficientnet-b0", "--width", "1.4", "--depth", "1.8")

    assert status == 0, err
    assert err == ""
    assert spec_from_yaml(out) == load_spec(output)
    assert output.read_text(encoding="utf-8") == out


def test_scale_refuses_to_overwrite_without_force(capsys, tmp_path):
    output = tmp_path / "b4.yaml"
    original = b"# keep me\nname: not a spec\n"
    output.write_bytes(original)
    argv = ("scale", "efficientnet-b0", "--width", "1.4", "--depth", "1.8", "-o", output)

    status, out, err = run(capsys, *argv)

    assert_refused(status, out, err, "scale", "--force", str(output))
    assert output.read_bytes() == original

    status, out, err = run(capsys, *argv, "--force")

    assert status == 0, err
    assert output.read_bytes() != original
    assert spec_complexity(load_spec(output)).parameters == EFFICIENTNET_B4_PARAMETERS
    assert [path.name for path in tmp_path.iterdir()] == ["b4.yaml"]


def test_compound_scaling_with_v2_rules_caps_the_image_size(capsys):
    specs = {}
    for phi in (1, 2):
        status, out, err = run(capsys, "scale", "efficientnetv2-s", "--phi", phi, "--v2-rules")
        assert status == 0, err
        specs[phi] = spec_from_yaml(out)
    status, out, err = run(capsys, "scale", "efficientnetv2-s", "--phi", 2)
    assert status == 0, err
    uncapped = spec_from_yaml(out)

    base = presets.get("efficientnetv2-s")
    assert specs[2].eval_image_size <= 480  # EfficientNetV2 Section 3.4: at most 480 pixels at inference
    assert uncapped.eval_image_size > 480  # 384 * 1.15^2 = 508: it is the rule that caps the size
    assert base.eval_image_size < specs[1].eval_image_size <= specs[2].eval_image_size
    assert specs[1].num_blocks > base.num_blocks
    assert specs[2].num_blocks > specs[1].num_blocks
    assert spec_complexity(specs[2]).parameters > spec_complexity(specs[1]).parameters


def test_scale_explains_why_the_train_size_differs_from_the_eval_size(capsys, tmp_path):
    """--image-size 380 gives train 384px: the spec's train/eval ratio (224/224) kept, rounded to a multiple of 8."""
    argv = ("scale", "efficientnet-b0", "--width", "1.4", "--depth", "1.8", "--image-size", 380)
    status, out, err = run(capsys, *argv, "-o", tmp_path / "b4.yaml")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("efficientnet-b0-w1.4-d1.8: train 384px, eval 380px")
    assert lines[1] == ("  eval 380px as given (--image-size); train 384px = 380 x 224/224 (the spec's train/eval "
                        "ratio) rounded to a multiple of 8")
    status, out, err = run(capsys, *argv)  # YAML on stdout, the note on stderr
    assert status == 0 and spec_from_yaml(out).train_image_size == 384
    assert err.startswith("nas scale: train 384px, eval 380px: eval 380px as given")

    status, out, err = run(capsys, "scale", "efficientnetv2-s", "--phi", 2, "--v2-rules", "-o", tmp_path / "s2.yaml")
    assert status == 0, err
    note = out.splitlines()[1]
    assert note.startswith("  train 400px and eval 480px are the spec's 300 and 384px times gamma^phi = 1.15^2")
    assert "then capped at 480px (--v2-rules)" in note and "trains on smaller images than it evaluates on" in note
    status, out, err = run(capsys, "scale", "tiny", "--width", 2, "-o", tmp_path / "t.yaml")
    assert status == 0 and out.splitlines()[1].startswith("stage "), out  # train = eval: nothing to explain


def test_scale_refuses_phi_together_with_width(capsys):
    status, out, err = run(capsys, "scale", "efficientnetv2-s", "--phi", "1", "--width", "2")

    assert_refused(status, out, err, "scale", "--phi", "--width")
    assert out == ""


def test_scale_refuses_no_scaling_option(capsys):
    status, out, err = run(capsys, "scale", "efficientnetv2-s")

    assert_refused(status, out, err, "scale", "--phi", "--width")
    assert out == ""


@pytest.mark.parametrize(
    ("options", "word"),
    [
        (("--width", "0"), "width"),
        (("--depth", "-1"), "depth"),
        (("--width", "nan"), "width"),
        (("--phi", "-1"), "phi"),
        (("--width", "1", "--image-size", "8"), "stride"),  # tiny's total stride is 16
        (("--width", "1", "--round-limit", "2"), "round_limit"),
    ],
)
def test_scale_refuses_bad_multipliers(capsys, options, word):
    status, out, err = run(capsys, "scale", "tiny", *options)

    assert_refused(status, out, err, "scale", word)


# --- space --------------------------------------------------------------------------------------------------------


def test_space_prints_size_and_one_row_per_stage(capsys):
    status, out, err = run(capsys, "space", "tiny")

    assert status == 0, err
    assert f"{TINY_SPACE_SIZE:,}" in out
    assert TINY_SPACE_SIZE == 746_496
    stage_rows = [line for line in out.splitlines() if re.match(r"\s*\d+\s+mbconv/fused_mbconv\s", line)]
    assert len(stage_rows) == TINY_NUM_STAGES
    assert [int(row.split()[0]) for row in stage_rows] == list(range(1, TINY_NUM_STAGES + 1))
    assert candidate_lines(out) == []


def test_space_samples_are_reproducible_members_of_the_space(capsys):
    status, out, err = run(capsys, "space", "tiny", "--sample", "5", "--seed", "3")
    assert status == 0, err
    candidates = candidate_lines(out)
    status, again, err = run(capsys, "space", "tiny", "--sample", "5", "--seed", "3")
    assert status == 0, err
    status, other, err = run(capsys, "space", "tiny", "--sample", "5", "--seed", "4")
    assert status == 0, err

    assert len(candidates) == 5
    assert all(len(blocks) == TINY_NUM_STAGES for blocks in candidates)
    assert candidate_lines(again) == candidates
    assert candidate_lines(other) != candidates
    space = presets.get_space("tiny")
    for blocks in candidates:
        stages = tuple(StageSpec.from_block_string(block) for block in blocks)
        spec = dataclasses.replace(space.baseline, stages=stages)
        params = space.to_params(spec)  # raises if the candidate is not in the space
        assert list(space.from_params(params).block_strings) == blocks


def test_space_json_reports_size_fingerprint_and_the_same_samples(capsys):
    status, out, err = run(capsys, "space", "tiny", "--json", "--sample", "5", "--seed", "3")
    assert status == 0, err
    report = json.loads(out)
    status, text, err = run(capsys, "space", "tiny", "--sample", "5", "--seed", "3")
    assert status == 0, err

    space = presets.get_space("tiny")
    assert report["size"] == TINY_SPACE_SIZE
    assert report["fingerprint"] == space.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", report["fingerprint"])
    assert report["baseline"] == list(space.baseline.block_strings)
    assert len(report["decisions"]) == 4 * TINY_NUM_STAGES
    assert report["samples"] == candidate_lines(text)


def test_space_refuses_a_negative_sample_count(capsys):
    status, out, err = run(capsys, "space", "tiny", "--sample", "-1")

    assert_refused(status, out, err, "space", "--sample")
    assert out == ""


# --- bad input ----------------------------------------------------------------------------------------------------


def _tiny_spec_yaml(change) -> str:
    data = presets.get("tiny").to_dict()
    change(data)
    return yaml.safe_dump(data, sort_keys=False)


def _set(*path, value):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


BAD_SPEC_FILES = {
    "unknown top-level key": (_tiny_spec_yaml(_set("colour", value="red")), ("unknown key", "colour")),
    "unknown stage key": (
        _tiny_spec_yaml(_set("stages", 0, "dilation", value=2)),
        ("stage 1", "unknown key", "dilation"),
    ),
    "kernel of 4": (_tiny_spec_yaml(_set("stages", 2, "kernel_size", value=4)), ("stage 3", "kernel_size", "got 4")),
    "expansion of 0": (_tiny_spec_yaml(_set("stages", 1, "expand_ratio", value=0)), ("stage 2", "expand_ratio")),
    "stage with no layers": (_tiny_spec_yaml(_set("stages", 3, "num_layers", value=0)), ("stage 4", "num_layers")),
    "no stages": (_tiny_spec_yaml(_set("stages", value=[])), ("stages",)),
    "stride beyond image size": (
        _tiny_spec_yaml(lambda data: data.update(train_image_size=8, eval_image_size=8)),
        ("total stride 16",),
    ),
    "python tag": ('!!python/object/apply:os.system ["echo hacked"]\n', ("not valid YAML",)),
    "python tag in a value": (
        _tiny_spec_yaml(_set("name", value="x")).replace("name: x", 'name: !!python/object/apply:os.system ["echo"]'),
        ("not valid YAML",),
    ),
    "not a mapping": ("- stem_channels\n- head_channels\n", ("mapping",)),
    "empty file": ("", ("mapping",)),
    "invalid YAML": ("stages: [unclosed\n", ("not valid YAML", "line 2")),
    "deeply nested YAML": ("[" * 5000 + "]" * 5000 + "\n", ("not valid YAML", "nested too deeply")),
    "float kernel": (_tiny_spec_yaml(_set("stages", 0, "kernel_size", value=3.0)), ("stage 1", "kernel_size", "3.0")),
    "float stride": (_tiny_spec_yaml(_set("stages", 1, "stride", value=1.0)), ("stage 2", "stride", "1.0")),
    "boolean stem stride": (_tiny_spec_yaml(_set("stem_stride", value=True)), ("stem_stride",)),
}


@pytest.mark.parametrize("command", [("show",), ("scale", "--width", "1.1")], ids=["show", "scale"])
@pytest.mark.parametrize("case", list(BAD_SPEC_FILES))
def test_bad_spec_file_is_refused(capsys, tmp_path, case, command):
    text, words = BAD_SPEC_FILES[case]
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")

    status, out, err = run(capsys, command[0], path, *command[1:])

    assert_refused(status, out, err, command[0], str(path), *words)
    assert out == ""


def test_binary_spec_file_is_refused(capsys, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")

    status, out, err = run(capsys, "show", path)

    assert_refused(status, out, err, "show", str(path), "UTF-8")


def test_scale_refuses_a_directory_as_output_and_leaves_nothing_behind(capsys, tmp_path):
    target = tmp_path / "out"
    target.mkdir()

    status, out, err = run(capsys, "scale", "tiny", "--width", "1", "-o", target, "--force")

    assert_refused(status, out, err, "scale", "directory")
    assert list(target.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_space_refuses_a_huge_sample_count(capsys):
    status, out, err = run(capsys, "space", "tiny", "--sample", "1000000000")

    assert_refused(status, out, err, "space", "--sample")


@pytest.mark.parametrize("command", [("show",), ("scale", "--width", "1.1")], ids=["show", "scale"])
def test_missing_spec_file_is_refused(capsys, tmp_path, command):
    path = tmp_path / "missing.yaml"

    status, out, err = run(capsys, command[0], path, *command[1:])

    assert_refused(status, out, err, command[0], str(path), "neither", "efficientnetv2-s")
    assert not path.exists()


def test_unknown_preset_is_refused_with_the_available_names(capsys):
    status, out, err = run(capsys, "show", "efficientnet-b9")

    assert_refused(status, out, err, "show", "efficientnet-b9", "neither", "available presets")
    for name in presets.names():
        assert name in err


def test_yaml_tags_never_run_code(capsys, tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "spec.yaml"
    path.write_text(f'!!python/object/apply:os.system ["touch {sentinel}"]\n', encoding="utf-8")

    status, out, err = run(capsys, "show", path)

    assert_refused(status, out, err, "show", str(path), "not valid YAML")
    assert not sentinel.exists()


def _tiny_space_yaml(**changes) -> str:
    data = {
        "name": "test",
        "backbone": "tiny",
        "defaults": {"op": ["mbconv", "fused_mbconv"], "kernel_size": [3, 5], "expand_ratio": [1, 4, 6]},
        "stages": [{"num_layers": [1, 2]}, {"num_layers": [1, 2]}, {"num_layers": [1, 2]}, {"num_layers": [2, 3]}],
    }
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False)


GOOD_SPACE = _tiny_space_yaml()
BAD_SPACE_FILES = {
    "kernel of 4": (_tiny_space_yaml(defaults={"kernel_size": [3, 4]}), ("kernel_size", "got 4")),
    "stage kernel of 4": (
        _tiny_space_yaml(stages=[{"num_layers": [1]}, {"num_layers": [2], "kernel_size": [4]}, {"num_layers": [2]},
                                 {"num_layers": [2]}]),
        ("stage 2", "kernel_size"),
    ),
    "expansion of 0": (_tiny_space_yaml(defaults={"expand_ratio": [0, 4]}), ("expand_ratio",)),
    "stage with no layers": (
        _tiny_space_yaml(stages=[{"num_layers": {"min": 0, "max": 2}}, {"num_layers": [2]}, {"num_layers": [2]},
                                 {"num_layers": [2]}]),
        ("stage 1", "num_layers"),
    ),
    "stride beyond image size": (_tiny_space_yaml(image_size=8), ("image_size 8", "total stride 16")),
    "too few stages": (
        _tiny_space_yaml(stages=[{"num_layers": [1, 2]}, {"num_layers": [1, 2]}, {"num_layers": [1, 2]}]),
        ("3 stages", "has 4"),
    ),
    "too many stages": (_tiny_space_yaml(stages=[{"num_layers": [1, 2]}] * 5), ("5 stages", "has 4")),
    "unknown key": (_tiny_space_yaml(colour="red"), ("unknown key", "colour")),
    "unknown stage key": (
        _tiny_space_yaml(stages=[{"num_layers": [1], "dilation": [2]}] + [{"num_layers": [2]}] * 3),
        ("stage 1", "unknown key", "dilation"),
    ),
    "backbone not among the choices": (
        _tiny_space_yaml(defaults={"kernel_size": [5, 7]}),
        ("backbone", "kernel_size"),
    ),
    "missing backbone file": (_tiny_space_yaml(backbone="no-such-backbone.yaml"), ("no-such-backbone.yaml",)),
    "python tag": ('!!python/object/apply:os.system ["echo hacked"]\n', ("not valid YAML",)),
    "not a mapping": ("- tiny\n", ("mapping",)),
    "float kernel choice": (_tiny_space_yaml(defaults={"kernel_size": [3, 3.0]}), ("kernel_size", "3.0")),
}


def test_the_bad_space_cases_start_from_a_good_space(capsys, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(GOOD_SPACE, encoding="utf-8")

    status, out, err = run(capsys, "space", path)

    assert status == 0, err
    assert f"{(2 * 2 * 3) ** 4 * 2 ** 4:,}" in out


@pytest.mark.parametrize("case", list(BAD_SPACE_FILES))
def test_bad_space_file_is_refused(capsys, tmp_path, case):
    text, words = BAD_SPACE_FILES[case]
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")

    status, out, err = run(capsys, "space", path, "--sample", "2")

    assert_refused(status, out, err, "space", str(path), *words)
    assert out == ""


def test_missing_space_file_is_refused(capsys, tmp_path):
    path = tmp_path / "missing-space.yaml"

    status, out, err = run(capsys, "space", path)

    assert_refused(status, out, err, "space", str(path), "neither", "tiny")


# --- bench and train ----------------------------------------------------------------------------------------------


def test_bench_reports_step_time_and_size(capsys):
    argv = ("bench", "tiny", "--device", "cpu", "--batch-size", 4, "--image-size", 32, "--num-classes", 10,
            "--warmup", 1, "--repeats", 2)
    status, out, err = run(capsys, *argv, "--json", "--inference")
    assert status == 0, err
    report = json.loads(out)
    assert report["parameters"] == spec_complexity(presets.get("tiny"), num_classes=10).parameters
    assert report["step"]["median_s"] > 0 and len(report["step"]["window_s"]) == 2
    assert report["images_per_second"] == pytest.approx(4 / report["step"]["median_s"])
    assert report["inference"]["median_s"] > 0 and report["device"].startswith("cpu")
    status, out, err = run(capsys, *argv, "--no-channels-last")
    assert status == 0, err
    assert "train step (median)" in out and "NCHW" in out and "process peak RSS" in out


def test_bench_relative_to_a_baseline_prints_the_paired_ratio_and_fills_the_cache(capsys, tmp_path):
    """Issue 16: nas bench SPEC --relative-to BASELINE is S/S0 as a campaign's reward sees it; with --storage it is
    read from, and added to, that storage's step-time cache."""
    storage = f"sqlite:///{tmp_path / 'cache.db'}"
    candidate = tmp_path / "candidate.yaml"
    dump_spec(presets.get_space("tiny").sample(3), candidate)
    argv = ("bench", candidate, "--relative-to", "tiny", "--device", "cpu", "--batch-size", 4,
            "--num-classes", 10, "--warmup", 1, "--repeats", 2, "--threads", 1)
    status, out, err = run(capsys, *argv, "--precision", 0, "--json", "--storage", storage)  # exactly 2 pairs
    assert status == 0, err
    relative = json.loads(out)["relative"]
    assert relative["cached"] is False and relative["step_time_pairs"] == 2 and relative["reference"] == "tiny"
    assert relative["step_time_ratio"] > 0 and relative["step_time_ratio_iqr"] >= 0
    assert relative["step_time_stopped_by"] == "pairs" and relative["step_time_ratio_low"] is None  # one quad
    assert relative["step_time_measure_s"] > 0
    status, out, err = run(capsys, *argv, "--precision", 0, "--storage", storage)
    assert status == 0, err
    assert f"{relative['step_time_ratio']:.4f} (from the step-time cache)" in out
    assert "no interval (too few pairs)" in out
    # No storage: timed again, nothing read or written; a cap that comes before any interval is said (as the cap,
    # or as contention when the machine running the test is busy).
    status, out, err = run(capsys, *argv, "--max-timing-s", 0.5)
    assert status == 0, err
    assert "interleaved pairs of windows" in out
    assert ("IMPRECISE: the time cap came before the interval narrowed to ±2.0%" in out
            or "IMPRECISE: every pair was timed under CPU contention" in out), out


def test_bench_relative_to_keys_the_cache_on_classes_and_ignores_a_bad_entry(capsys, tmp_path):
    """Issue 25: a ratio measured for 10 classes is not served for 50,000 (another head); an entry another client
    damaged (-1, NaN) is said on stderr and timed again, and --json never holds a non-finite number."""
    storage = f"sqlite:///{tmp_path / 'cache.db'}"
    candidate = tmp_path / "candidate.yaml"
    dump_spec(presets.get_space("tiny").sample(3), candidate)
    argv = ("bench", candidate, "--relative-to", "tiny", "--device", "cpu", "--batch-size", 4, "--image-size", 16,
            "--warmup", 1, "--repeats", 2, "--precision", 0, "--threads", 1, "--json", "--storage", storage)
    status, out, err = run(capsys, *argv, "--num-classes", 10)
    assert status == 0 and json.loads(out)["relative"]["cached"] is False, err
    status, out, err = run(capsys, *argv, "--num-classes", 50_000)
    assert status == 0 and json.loads(out)["relative"]["cached"] is False, err
    cache = optuna.load_study(study_name=CACHE_STUDY, storage=storage)
    assert len(cache.user_attrs) == 2
    for key, bad in zip(cache.user_attrs, (-1.0, float("nan"))):
        cache.set_user_attr(key, {**cache.user_attrs[key], "step_time_ratio": bad})
    for classes in (10, 50_000):
        status, out, err = run(capsys, *argv, "--num-classes", classes)
        relative = json.loads(out, parse_constant=pytest.fail)["relative"]  # strict JSON: no NaN or Infinity
        assert status == 0 and relative["cached"] is False and math.isfinite(relative["step_time_ratio"]), err
        assert relative["step_time_ratio"] > 0 and "ignored" in err and CACHE_STUDY in err


def test_bench_storage_in_a_missing_directory_is_refused_and_creates_nothing(capsys, tmp_path):
    """Issue 25: a mistyped --storage path made the folders and an empty database."""
    status, out, err = run(capsys, "bench", "tiny", "--relative-to", "tiny", "--device", "cpu", "--batch-size", 2,
                           "--image-size", 16, "--warmup", 1, "--repeats", 1, "--threads", 1,
                           "--storage", f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}")
    assert_refused(status, out, err, "bench", f"no directory {tmp_path / 'missing' / 'dir'}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device, words", [("cuda", ["'cuda' is not available"]), ("tpu", ["device must be one of"]),
                                           ("cuda:7", ["'cuda:7' is not available"])])
def test_bench_refuses_a_device_that_is_not_there(capsys, monkeypatch, device, words):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    status, out, err = run(capsys, "bench", "tiny", "--device", device)
    assert_refused(status, out, err, "bench", *words)


def test_train_prints_progress_and_the_result(capsys):
    status, out, err = run(capsys, "train", "tiny", "--data", "synthetic:num_images=700", "--epochs", 2,
                           "--batch-size", 64, "--device", "cpu")
    assert status == 0, err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "img/s" in err
    assert "70 images: the hold-out of synthetic:num_images=700" in out and " ok" in out


def test_train_json_is_the_eval_result(capsys):
    status, out, err = run(capsys, "train", "tiny", "--data", "synthetic:num_images=700", "--epochs", 1,
                           "--batch-size", 64, "--device", "cpu", "--json", "--seed", 3)
    assert status == 0, err
    result = json.loads(out)
    assert result["status"] == "ok" and 0 <= result["accuracy"] <= 1 and result["epochs_completed"] == 1
    assert err == ""


def test_train_that_diverges_exits_1_with_the_reason(capsys):
    status, out, err = run(capsys, "train", "tiny", "--data", "synthetic:num_images=700", "--epochs", 1,
                           "--batch-size", 64, "--device", "cpu", "--lr", 1e6)
    assert status == 1
    assert "failed: non-finite loss" in out and "Traceback" not in err


@pytest.mark.parametrize(
    "source, words",
    [("npz:{tmp}/missing.npz", ["missing.npz"]), ("cifar10:{tmp}/nowhere", ["nowhere"]),
     ("imagenet:{tmp}", ["imagenet", "synthetic"]), ("synthetic:colour=3", ["colour", "num_images"])],
)
def test_train_refuses_bad_data_sources(capsys, tmp_path, source, words):
    status, out, err = run(capsys, "train", "tiny", "--data", source.format(tmp=tmp_path), "--device", "cpu")
    assert_refused(status, out, err, "train", *words)


# --- trials, best, export (on a study written without Ray) --------------------------------------------------------


def recorded_study(storage: str, measurements: list, name: str = "s"):
    """A study of the default campaign (the tiny space) whose first trial is the baseline, recorded as the campaign
    records results: ``measurements`` are (accuracy, step time s, parameters), None for an out-of-memory failure."""
    from nas import study as studies
    from nas.campaign import CampaignConfig
    from nas.controllers import distributions, make_sampler
    from nas.records import EvalResult

    space = presets.get_space("tiny")
    config = CampaignConfig(storage=storage, study=name)
    study = studies.open_study(config.study_settings(), space, make_sampler("random", space))
    for index, values in enumerate(measurements):
        trial = study.ask(fixed_distributions=distributions(space))
        spec = space.from_params(trial.params)
        trial.set_user_attr("role", "baseline" if index == 0 else "candidate")
        trial.set_user_attr("spec", spec.to_dict())
        trial.set_user_attr("block_strings", list(spec.block_strings))
        result = (EvalResult(status="failed", failure_reason="out of memory: x") if values is None else
                  EvalResult(status="ok", accuracy=values[0], step_time_s=values[1], parameters=values[2], macs=1))
        studies.record_result(study, trial, spec, result, config.reward_exponents)
    return study


@pytest.fixture
def finished_study(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path}/s.db"
    study = recorded_study(storage, [(0.6, 0.02, 2000), (0.7, 0.04, 2000), None, (0.6, 0.02, 1000)])
    study.ask()  # a trial still running
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 3
    return storage, study


def test_trials_lists_every_trial_in_each_format(capsys, finished_study):
    storage, _ = finished_study
    status, out, err = run(capsys, "trials", "--study", "s", "--storage", storage, "--format", "json")
    assert status == 0, err
    rows = json.loads(out)
    assert [row["state"] for row in rows] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "RUNNING"]
    assert rows[2]["failure_reason"] == "out of memory: x" and rows[0]["role"] == "baseline"
    status, out, err = run(capsys, "trials", "--study", "s", "--storage", storage, "--format", "csv")
    assert status == 0 and out.splitlines()[0].startswith("number,state,role,reward") and len(out.splitlines()) == 6
    status, out, _ = run(capsys, "trials", "--study", "s", "--storage", storage)
    assert "baseline" in out and "RUNNING" in out


def test_trials_keep_counts_integer_and_show_missing_values_as_a_dash(capsys, finished_study):
    storage, _ = finished_study
    rows = json.loads(run(capsys, "trials", "--study", "s", "--storage", storage, "--format", "json")[1])
    assert [row["parameters"] for row in rows] == [2000, 2000, None, 1000, None]  # ints and nulls, not floats
    csv_rows = run(capsys, "trials", "--study", "s", "--storage", storage, "--format", "csv")[1].splitlines()
    assert csv_rows[1].split(",")[6:8] == ["2000", "1"] and csv_rows[3].split(",")[6:8] == ["", ""]
    table = run(capsys, "trials", "--study", "s", "--storage", storage)[1].splitlines()
    header = table[0].split()
    failed = table[3].split()
    assert failed[header.index("parameters")] == "-" and failed[header.index("reward")] == "-"
    assert table[1].split()[header.index("parameters")] == "2000" and "<NA>" not in "\n".join(table)


def test_best_by_reward_and_pareto(capsys, finished_study):
    storage, _ = finished_study
    status, out, err = run(capsys, "best", "--study", "s", "--storage", storage, "-k", "2", "--format", "json")
    assert status == 0, err
    assert [row["number"] for row in json.loads(out)] == [1, 3]
    status, out, err = run(capsys, "best", "--study", "s", "--storage", storage, "--pareto", "--format", "json")
    assert sorted(row["number"] for row in json.loads(out)) == [1, 3]
    status, out, err = run(capsys, "best", "--study", "s", "--storage", storage, "-k", "0")
    assert_refused(status, out, err, "best", "-k")


def test_export_the_best_or_a_chosen_trial(capsys, tmp_path, finished_study):
    storage, study = finished_study
    status, out, err = run(capsys, "export", "--study", "s", "--storage", storage)
    assert status == 0, err
    assert spec_from_yaml(out).block_strings == tuple(study.trials[1].user_attrs["block_strings"])
    assert spec_from_yaml(out).name == "s-trial1"
    output = tmp_path / "t3.yaml"
    status, out, err = run(capsys, "export", "--study", "s", "--storage", storage, "--trial", 3, "-o", output)
    assert status == 0 and "wrote trial 3" in out
    assert list(load_spec(output).block_strings) == study.trials[3].user_attrs["block_strings"]
    status, out, err = run(capsys, "export", "--study", "s", "--storage", storage, "--format", "timm")
    assert status == 0 and "arch_def = [" in out and out.count("['") == 4


def test_an_exported_spec_says_the_classes_it_was_searched_on_and_show_counts_for_them(capsys, tmp_path,
                                                                                        finished_study):
    """Issue 28: nas show winner.yaml reported 1000 classes for a network searched on 10."""
    from nas.complexity import count_spec
    from nas.study import record_network_io

    storage, study = finished_study
    record_network_io(study, num_classes=10, in_channels=1)  # as the campaign records its data's
    status, out, err = run(capsys, "export", "--study", "s", "--storage", storage, "-o", tmp_path / "winner.yaml")
    assert status == 0, err
    winner = load_spec(tmp_path / "winner.yaml")
    assert (winner.num_classes, winner.in_channels, winner.name) == (10, 1, "s-trial1")
    assert winner.block_strings == tuple(study.trials[1].user_attrs["block_strings"])
    status, out, err = run(capsys, "show", tmp_path / "winner.yaml", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert (report["num_classes"], report["in_channels"]) == (10, 1)
    assert report["parameters"] == count_spec(winner, num_classes=10, in_channels=1).parameters
    assert report["parameters"] < count_spec(winner, num_classes=1000, in_channels=1).parameters


# --- search: what it says at the end ------------------------------------------------------------------------------


def _search(capsys, storage: str, trials: int) -> tuple[int, str, str]:
    """``nas search`` on study ``s`` of ``storage`` with the default campaign, in this process (no Ray)."""
    return run(capsys, "search", "--study", "s", "--storage", storage, "--trials", trials, "--executor", "local")


@pytest.mark.parametrize("flags, words", [(("--cpus-per-trial", 64), ("64 CPU(s)", "--cpus-per-trial")),
                                          (("--gpus-per-trial", 1), ("1 GPU(s)", "--gpus-per-trial 0"))])
def test_the_local_executor_refuses_a_trial_this_machine_cannot_hold(capsys, tmp_path, monkeypatch, flags, words):
    """Issue 25: Ray refuses such a trial before the study is touched; the local executor ran 64 threads on 2 cores,
    or the CPU for a GPU trial, without a word."""
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "search", "--study", "s", "--trials", 2, "--executor", "local", *flags)
    assert_refused(status, out, err, "search", "this machine (--executor local)", *words)
    assert list(tmp_path.iterdir()) == []  # no study, no runs/ directory


def test_a_search_whose_study_has_more_than_the_budget_says_so_truthfully(capsys, tmp_path, finished_study):
    """Four finished trials, --trials 2: nothing runs, and the count is not written as "4/2" (issue 15)."""
    from nas import records
    from nas.study import load_study

    storage, _ = finished_study
    status, out, err = _search(capsys, storage, 2)
    assert status == 0, err
    assert ("4 trials finished (budget 2, already met; none ran now): nothing to do; raise --trials above 4 to "
            "search more" in out.splitlines())
    assert "4/2" not in out
    # The best trial (1) is a candidate: exported without the baseline's note, and its absolute path recorded.
    assert "best: trial 1, reward" in out and "no candidate beat" not in out
    exported = tmp_path / "runs" / "s-best.yaml"
    assert f"exported the best architecture to {Path('runs') / 's-best.yaml'}" in out
    assert load_spec(exported).name == "s-trial1"
    assert load_study(storage, "s").user_attrs[records.EXPORTED_SPEC] == str(exported.resolve())


def test_a_search_where_no_candidate_beat_the_baseline_says_so(capsys, tmp_path):
    from nas import records
    from nas.study import load_study

    storage = f"sqlite:///{tmp_path}/b.db"
    recorded_study(storage, [(0.6, 0.02, 2000), (0.5, 0.02, 2000), (0.55, 0.02, 2000)])
    output = tmp_path / "elsewhere" / "winner.yaml"
    status, out, err = run(capsys, "search", "--study", "s", "--storage", storage, "--trials", 3, "--executor",
                           "local", "--export", output)
    assert status == 0, err
    assert "best: trial 0, the baseline, reward 0.6000" in out
    assert "no candidate beat the baseline" in out
    assert f"exported the best architecture (the baseline's: no candidate beat it) to {output}" in out
    assert load_study(storage, "s").user_attrs[records.EXPORTED_SPEC] == str(output)


@pytest.mark.parametrize("finished, budget, ran, line", [
    (3, 5, 1, "3/5 trials finished (1 in this run)"),
    (5, 5, 2, "5/5 trials finished (2 in this run)"),
    (5, 5, 0, "5 trials finished (budget 5, already met; none ran now): nothing to do; raise --trials above 5 to "
              "search more"),
    (12, 5, 0, "12 trials finished (budget 5, already met; none ran now): nothing to do; raise --trials above 12 to "
               "search more"),
    (6, 5, 2, "6 trials finished (budget 5; 2 in this run)"),
])
def test_the_finished_line_is_true_for_every_count(finished, budget, ran, line):
    from nas.cli import _finished_line

    assert _finished_line(finished, budget, ran) == line


@pytest.mark.parametrize("argv, words", [
    (("--trial", "2"), ["trial 2 is FAIL"]), (("--trial", "4"), ["trial 4 is RUNNING"]),
    (("--trial", "9"), ["no trial 9"]),
])
def test_export_refuses_trials_without_a_result(capsys, finished_study, argv, words):
    storage, _ = finished_study
    status, out, err = run(capsys, "export", "--study", "s", "--storage", storage, *argv)
    assert_refused(status, out, err, "export", *words)


def test_a_missing_study_is_named(capsys, tmp_path):
    status, out, err = run(capsys, "trials", "--study", "nope", "--storage", f"sqlite:///{tmp_path}/x.db")
    assert_refused(status, out, err, "trials", f"no study database {tmp_path}/x.db;", "study files in", ": none")
    assert not (tmp_path / "x.db").exists()


def _snapshot(root) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_a_mistyped_study_name_suggests_the_nearest_study(capsys, tmp_path):
    from nas import study as studies
    from nas.campaign import CampaignConfig
    from nas.controllers import make_sampler

    space = presets.get_space("tiny")
    studies.open_study(CampaignConfig(study="cpu-demo").study_settings(), space,
                       make_sampler("random", space))  # runs/cpu-demo.db
    before = _snapshot(tmp_path)
    for command in ("trials", "best", "export"):
        status, out, err = run(capsys, command, "--study", "cpu_demo")
        assert_refused(status, out, err, command, f"no study database runs/cpu_demo.db ({tmp_path}/runs/cpu_demo.db)",
                       "study files in runs: cpu-demo.db", "did you mean --study cpu-demo?")
    status, out, err = run(capsys, "trials", "--study", "cpu_demo", "--storage", "sqlite:///runs/cpu-demo.db")
    assert_refused(status, out, err, "trials", "no study 'cpu_demo' in sqlite:///runs/cpu-demo.db",
                   "studies there: cpu-demo", "did you mean --study cpu-demo?")
    assert _snapshot(tmp_path) == before


def test_a_missing_database_lists_the_ones_under_runs_and_says_where_it_looked(capsys, tmp_path, monkeypatch):
    import sqlite3

    (tmp_path / "runs").mkdir()
    for name in ("cifar10.db", "tiny-search.db"):
        sqlite3.connect(tmp_path / "runs" / name).close()
    before = _snapshot(tmp_path)
    status, out, err = run(capsys, "trials", "--study", "mnist")
    assert_refused(status, out, err, "trials", f"no study database runs/mnist.db ({tmp_path}/runs/mnist.db)",
                   "study files in runs: cifar10.db, tiny-search.db")
    assert "did you mean" not in err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the same command from another directory says where it looked
    status, out, err = run(capsys, "report", "--study", "cifar10")
    assert_refused(status, out, err, "report", f"no study database runs/cifar10.db ({elsewhere}/runs/cifar10.db)",
                   "there is no folder runs")
    assert _snapshot(tmp_path) == sorted([*before, "elsewhere"])


# --- families and coefficient search ------------------------------------------------------------------------------


def test_family_writes_one_spec_per_phi(capsys, tmp_path):
    directory = tmp_path / "family"
    status, out, err = run(capsys, "scale", "efficientnetv2-s", "--family", 3, "--v2-rules", "-o", directory)
    assert status == 0, err
    specs = [load_spec(directory / f"efficientnetv2-s-phi{k}.yaml") for k in (1, 2, 3)]
    assert all(spec.eval_image_size <= 480 for spec in specs) and "wrote 3 spec(s)" in out
    parameters = [spec_complexity(spec).parameters for spec in specs]
    assert parameters == sorted(parameters) and f"{parameters[0]:,}" in out
    status, out, err = run(capsys, "scale", "efficientnetv2-s", "--family", 3, "-o", directory)
    assert_refused(status, out, err, "scale", "--force")
    status, out, err = run(capsys, "scale", "tiny", "--family", 2)
    assert_refused(status, out, err, "scale", "-o DIRECTORY")


def test_coefficient_search_picks_a_grid_point_and_scales_with_it(capsys, tmp_path, monkeypatch):
    from nas import coefficient_search, scaling

    grid = [scaling.CompoundCoefficients(1.0, 1.2, 1.2), scaling.CompoundCoefficients(1.4, 1.2, 1.0)]
    monkeypatch.setattr(coefficient_search, "coefficient_grid", lambda step: grid)
    directory = tmp_path / "searched"
    status, out, err = run(capsys, "scale", "tiny", "--search-coefficients", "--data", "synthetic:num_images=400",
                           "--epochs", 1, "--batch-size", 64, "--device", "cpu", "--family", 2, "-o", directory)
    assert status == 0, err
    chosen = json.loads((directory / "coefficients.json").read_text())
    assert (chosen["alpha"], chosen["beta"], chosen["gamma"]) in [(1.0, 1.2, 1.2), (1.4, 1.2, 1.0)]
    assert f"alpha {chosen['alpha']:g}, beta {chosen['beta']:g}, gamma {chosen['gamma']:g}" in out
    assert out.count("best") == 1 and (directory / "tiny-phi2.yaml").exists()


def test_train_progressive_reports_each_stage_size(capsys):
    status, out, err = run(capsys, "train", "tiny", "--data", "synthetic:num_images=700", "--epochs", 2,
                           "--batch-size", 64, "--device", "cpu", "--progressive", "--stages", 2,
                           "--image-size-range", 24, 32, "--randaugment-range", 0, 5, "--mixup-range", 0, 0.2)
    assert status == 0, err
    assert "progressive 24->32px in 2 stages" in err and "24px" in err and "32px" in err
    status, out, err = run(capsys, "train", "tiny", "--data", "synthetic:num_images=700", "--epochs", 1,
                           "--progressive", "--stages", 2, "--device", "cpu")
    assert_refused(status, out, err, "train", "epochs (1) must be at least progressive.num_stages (2)")


def test_train_checkpoints_resumes_and_saves(capsys, tmp_path):
    import torch

    argv = ("train", "tiny", "--data", "synthetic:num_images=700", "--epochs", 2, "--batch-size", 64,
            "--device", "cpu", "--ema", 0.99, "--checkpoint", tmp_path / "run.pt", "--json")
    status, out, err = run(capsys, *argv, "--save", tmp_path / "saved")
    assert status == 0, err
    first = json.loads(out)
    saved = tmp_path / "saved"
    assert load_spec(saved / "spec.yaml") == dataclasses.replace(presets.get("tiny"), num_classes=10)
    assert json.loads((saved / "result.json").read_text())["accuracy"] == first["accuracy"]
    assert "classifier.weight" in torch.load(saved / "weights.pt", weights_only=True)
    status, out, err = run(capsys, *argv, "--resume")  # the checkpoint is complete: nothing left to train
    assert status == 0 and json.loads(out)["accuracy"] == first["accuracy"]
    status, out, err = run(capsys, "train", "tiny", "--resume", "--device", "cpu")
    assert_refused(status, out, err, "train", "--checkpoint")


def test_train_exports_onnx_of_the_saved_weights(capsys, tmp_path):
    argv = ("train", "tiny", "--data", "synthetic:num_images=700", "--epochs", 1, "--batch-size", 64,
            "--device", "cpu", "--export-onnx", tmp_path / "tiny.onnx")
    status, out, err = run(capsys, *argv)
    assert_refused(status, out, err, "train", "--save")
    status, out, err = run(capsys, *argv, "--save", tmp_path / "saved")
    assert status == 0, err
    assert (tmp_path / "tiny.onnx").exists() and "ONNX logits match PyTorch's" in err
    assert "it takes float32 (batch, 3, 32, 32) pixels in [0, 1] and normalizes them itself" in err


def test_train_records_what_inference_needs_in_result_json_and_the_onnx_metadata(capsys, tmp_path):
    """Issue 28: the normalization the run trained with was in none of weights.pt, result.json, spec.yaml, and
    the ONNX file had no metadata. Read back through ONNX Runtime, the metadata holds the training data's values."""
    import onnxruntime

    from nas.data import load_data

    status, out, err = run(capsys, "train", "tiny", "--data", "synthetic:num_images=700", "--epochs", 1,
                           "--batch-size", 64, "--device", "cpu", "--seed", 3, "--image-size", 24,
                           "--save", tmp_path / "saved", "--export-onnx", tmp_path / "tiny.onnx")
    assert status == 0, err
    data = load_data("synthetic:num_images=700", image_size=24, val_fraction=0.1, seed=3)
    expected = {"image_size": 24, "in_channels": 3, "num_classes": 10, "mean": list(data.mean), "std": list(data.std)}
    assert json.loads((tmp_path / "saved" / "result.json").read_text())["input"] == expected
    session = onnxruntime.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert {key: json.loads(metadata[key]) for key in expected} == expected
    assert "class_names" not in metadata  # synthetic data names no classes


# --- input channels, checkpoints and clean refusals of training runs (issue 11) ------------------------------------

TINY_TRAIN = ("train", "tiny", "--data", "synthetic:num_images=700", "--epochs", 1, "--batch-size", 64,
              "--device", "cpu")


def _tripwires(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Makes ``nas.data.load_data`` and/or ``nas.train.train_and_evaluate`` fail the test if a command reaches them."""
    import nas.data
    import nas.train

    def reached(what: str):
        def fail(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"the refused command reached {what}")
        return fail

    for name in names:
        monkeypatch.setattr(nas.data if name == "load_data" else nas.train, name, reached(name))


def test_bench_times_one_channel_images_and_refuses_a_contradicting_spec(capsys, tmp_path):
    argv = ("bench", "tiny", "--device", "cpu", "--batch-size", 2, "--image-size", 32, "--num-classes", 10,
            "--warmup", 1, "--repeats", 1)
    status, out, err = run(capsys, *argv, "--in-channels", 1, "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["in_channels"] == 1
    assert report["parameters"] == spec_complexity(presets.get("tiny"), num_classes=10, in_channels=1).parameters
    status, out, err = run(capsys, *argv)
    assert status == 0 and "32px, 3 channel(s)" in out
    dump_spec(dataclasses.replace(presets.get("tiny"), in_channels=1), tmp_path / "gray.yaml")
    status, out, err = run(capsys, "bench", tmp_path / "gray.yaml", *argv[2:], "--in-channels", 3)
    assert_refused(status, out, err, "bench", "pins in_channels 1", "got in_channels 3")
    status, out, err = run(capsys, *argv, "--in-channels", 0)
    assert_refused(status, out, err, "bench", "in_channels must be an integer in [1, 16384]", "got 0")


@pytest.mark.parametrize("error", [
    "torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 96.00 GiB')",
    "RuntimeError(\"DefaultCPUAllocator: can't allocate memory: you tried to allocate 103079215104 bytes.\")",
    "MemoryError()",
])
def test_bench_out_of_memory_is_one_line_naming_spec_batch_and_image_size(capsys, monkeypatch, error):
    import torch

    import nas.measure

    def step_that_runs_out(*args: object, **kwargs: object) -> None:
        raise eval(error, {"torch": torch})

    monkeypatch.setattr(nas.measure, "time_step", step_that_runs_out)  # the step fails; the batch is small
    status, out, err = run(capsys, "bench", "tiny", "--device", "cpu", "--batch-size", 6, "--image-size", 48)
    assert_refused(status, out, err, "bench", "out of memory", "tiny", "batch size 6", "image size 48px",
                   "smaller --batch-size or --image-size")


def test_bench_other_runtime_errors_are_not_called_out_of_memory(monkeypatch):
    import nas.measure

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug, not a full device")

    monkeypatch.setattr(nas.measure, "time_step", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["bench", "tiny", "--device", "cpu"])


def test_train_on_grayscale_npz_saves_a_one_channel_spec_and_exports_onnx(capsys, tmp_path):
    import numpy as np
    import onnx
    import torch

    generator = np.random.default_rng(0)
    np.savez(tmp_path / "gray.npz", images=generator.integers(0, 256, (300, 16, 16), dtype=np.uint8),
             labels=np.arange(300) % 3)
    status, out, err = run(capsys, "train", "tiny", "--data", f"npz:{tmp_path / 'gray.npz'}", "--epochs", 1,
                           "--batch-size", 32, "--device", "cpu", "--save", tmp_path / "saved",
                           "--export-onnx", tmp_path / "gray.onnx")
    assert status == 0, err
    assert "1 channel(s)" in err and "ONNX logits match PyTorch's" in err
    saved = tmp_path / "saved"
    assert load_spec(saved / "spec.yaml") == dataclasses.replace(presets.get("tiny"), in_channels=1, num_classes=3)
    assert torch.load(saved / "weights.pt", weights_only=True)["stem.0.weight"].shape[1] == 1
    dimensions = onnx.load(str(tmp_path / "gray.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [dimension.dim_value for dimension in dimensions][1:] == [1, 16, 16]
    assert sorted(entry.name for entry in saved.iterdir()) == ["result.json", "spec.yaml", "weights.pt"]
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["gray.npz", "gray.onnx", "saved"]


def test_train_refuses_a_spec_pinning_other_channels_than_the_data(capsys, tmp_path, monkeypatch):
    _tripwires(monkeypatch, "train_and_evaluate")
    dump_spec(dataclasses.replace(presets.get("tiny"), in_channels=1), tmp_path / "gray.yaml")
    status, out, err = run(capsys, "train", tmp_path / "gray.yaml", *TINY_TRAIN[2:])
    assert_refused(status, out, err, "train", "pins in_channels 1", "the data synthetic", "has 3 channel(s)")


def test_train_refuses_a_batch_larger_than_the_training_split_before_training(capsys, tmp_path, monkeypatch):
    _tripwires(monkeypatch, "train_and_evaluate")
    status, out, err = run(capsys, *TINY_TRAIN, "--batch-size", 1000, "--checkpoint", tmp_path / "run.pt")
    assert_refused(status, out, err, "train", "batch_size 1000", "630 images", "at most 630")
    assert sorted(entry.name for entry in tmp_path.iterdir()) == []  # the lock went with the refusal


def test_train_resume_refusals_come_before_the_data_loads(capsys, tmp_path, monkeypatch):
    status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", tmp_path / "run.pt", "--json")
    assert status == 0, err
    checkpoint = (tmp_path / "run.pt").read_bytes()
    _tripwires(monkeypatch, "load_data", "train_and_evaluate")

    status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", tmp_path / "new" / "none.pt", "--resume")
    assert_refused(status, out, err, "train", f"no checkpoint at {tmp_path / 'new' / 'none.pt'}",
                   "run without --resume to start")
    assert not (tmp_path / "new").exists()

    status, out, err = run(capsys, *TINY_TRAIN, "--epochs", 3, "--lr", 0.05, "--checkpoint", tmp_path / "run.pt",
                           "--resume")
    assert_refused(status, out, err, "train", "run.pt was written for another run",
                   "config epochs 1 in the checkpoint, 3 now", "config learning_rate auto in the checkpoint, 0.05 now")

    (tmp_path / "garbage.pt").write_bytes(checkpoint[: len(checkpoint) // 3])
    status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", tmp_path / "garbage.pt", "--resume")
    assert_refused(status, out, err, "train", f"{tmp_path / 'garbage.pt'} is not a checkpoint written by nas train")

    status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", tmp_path, "--resume")
    assert_refused(status, out, err, "train", "--checkpoint", "is a directory")
    assert (tmp_path / "run.pt").read_bytes() == checkpoint
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["garbage.pt", "run.pt"]


@pytest.mark.parametrize("resume", [False, True])
def test_a_second_train_on_a_held_checkpoint_is_refused_naming_the_holder(capsys, tmp_path, monkeypatch, resume):
    import os
    import socket

    from search_spaces.files import FileLock

    status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", tmp_path / "run.pt", "--json")
    assert status == 0, err
    checkpoint = (tmp_path / "run.pt").read_bytes()
    with FileLock(tmp_path / "run.pt", what="checkpoint"), monkeypatch.context() as tripped:
        _tripwires(tripped, "load_data", "train_and_evaluate")
        status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", tmp_path / "run.pt",
                               *(["--resume"] if resume else []))
        assert_refused(status, out, err, "train", f"checkpoint {tmp_path / 'run.pt'} is in use by process "
                                                  f"{os.getpid()} on host {socket.gethostname()}")
    assert (tmp_path / "run.pt").read_bytes() == checkpoint
    status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", tmp_path / "run.pt", "--resume", "--json")
    assert status == 0, err  # released: the same command runs
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["run.pt"]


def test_version_prints_the_installed_distributions_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"nas {version('training-aware-nas')}\n"


# --- the first hour of a new user (issue 15): train's checkpoint and device, Ctrl-C, usage errors, help -----------


def test_train_refuses_an_existing_checkpoint_without_resume_and_force_starts_over(capsys, tmp_path, monkeypatch):
    checkpoint = tmp_path / "run.pt"
    status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", checkpoint)
    assert status == 0 and "epoch 1/1" in err, err
    written = checkpoint.read_bytes()
    with monkeypatch.context() as tripped:
        _tripwires(tripped, "load_data", "train_and_evaluate")
        status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", checkpoint)
        assert_refused(status, out, err, "train", f"--checkpoint {checkpoint} exists", "--resume", "--force")
        status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", checkpoint, "--resume", "--force")
        assert_refused(status, out, err, "train", "--resume", "--force", "one of them")
        status, out, err = run(capsys, *TINY_TRAIN, "--force")
        assert_refused(status, out, err, "train", "--force", "--checkpoint PATH")
    assert checkpoint.read_bytes() == written
    status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", checkpoint, "--resume")
    assert status == 0 and "epoch 1/1" not in err, err  # resumed: the one epoch was done already
    status, out, err = run(capsys, *TINY_TRAIN, "--checkpoint", checkpoint, "--force", "--seed", 1)
    assert status == 0 and "epoch 1/1" in err, err  # started over, at epoch 1, with the new settings
    assert checkpoint.read_bytes() != written
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["run.pt"]


@pytest.mark.parametrize("device, words", [("cuda", ["device 'cuda' is not available"]),
                                           ("cuda:3", ["device 'cuda:3' is not available"]),
                                           ("tpu", ["device must be one of", "'tpu'"])])
def test_train_on_a_device_that_is_not_there_is_one_line_before_the_data_loads(capsys, monkeypatch, device, words):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    _tripwires(monkeypatch, "load_data", "train_and_evaluate")
    status, out, err = run(capsys, "train", "tiny", "--device", device, "--checkpoint", "run.pt")
    assert_refused(status, out, err, "train", *words)
    status, out, err = run(capsys, "scale", "tiny", "--search-coefficients", "--device", device, "-o", "family")
    assert_refused(status, out, err, "scale", *words)


def _interrupt_at_epoch(monkeypatch: pytest.MonkeyPatch, interrupted: int) -> None:
    """Makes training raise KeyboardInterrupt (as Ctrl-C does) when epoch ``interrupted`` starts."""
    import nas.train

    train_epoch = nas.train.train_epoch

    def until_ctrl_c(step: object, batches: object, epoch: int, *args: object, **kwargs: object) -> object:
        if epoch == interrupted:
            raise KeyboardInterrupt
        return train_epoch(step, batches, epoch, *args, **kwargs)

    monkeypatch.setattr(nas.train, "train_epoch", until_ctrl_c)


def _lines_after_progress(err: str) -> list[str]:
    return [line for line in err.splitlines() if not line.startswith(("training ", "recipe: ", "epoch "))]


def test_ctrl_c_in_train_is_one_line_with_the_exact_resume_command(capsys, tmp_path, monkeypatch):
    import shlex

    from nas.cli import EXIT_INTERRUPTED

    argv = ["train", "tiny", "--data", "synthetic:num_images=700", "--epochs", "3", "--batch-size", "64", "--device",
            "cpu", "--checkpoint", "my run.pt", "--force"]
    with monkeypatch.context() as interrupted:
        _interrupt_at_epoch(interrupted, 2)
        status, out, err = run(capsys, *argv)
    assert status == EXIT_INTERRUPTED and out == "" and "Traceback" not in err
    assert "epoch 1/3" in err
    (line,) = _lines_after_progress(err)
    resume = [token for token in argv if token != "--force"] + ["--resume"]
    assert line == f"nas train: interrupted; epoch 1/3 is saved in my run.pt; resume with: nas {shlex.join(resume)}"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["my run.pt"]  # the checkpoint's lock is released

    pasted = shlex.split(line.split("resume with: ")[1])
    assert pasted[0] == "nas"
    status, out, err = run(capsys, *pasted[1:])
    assert status == 0, err
    assert "epoch 1/3" not in err and "epoch 2/3" in err and "epoch 3/3" in err


@pytest.mark.parametrize("checkpoint, words", [
    (None, ["nas train: interrupted;", "without --checkpoint there is nothing to resume", "--checkpoint PATH"]),
    ("run.pt", ["nas train: interrupted before an epoch was saved to run.pt", "run the same command"]),
])
def test_ctrl_c_before_anything_is_saved_says_so_in_one_line(capsys, monkeypatch, checkpoint, words):
    from nas.cli import EXIT_INTERRUPTED

    _interrupt_at_epoch(monkeypatch, 1)
    status, out, err = run(capsys, *TINY_TRAIN, *(["--checkpoint", checkpoint] if checkpoint else []))
    assert status == EXIT_INTERRUPTED and "Traceback" not in err
    (line,) = _lines_after_progress(err)
    for word in words:
        assert word in line, line


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    """Runs ``nas ARGV`` that argparse refuses; asserts exit status 2 and returns the lines of stderr."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.splitlines()


@pytest.mark.parametrize("argv, first_line", [
    (["search", "--trails", "20"], "nas search: error: unrecognized arguments: --trails 20; did you mean --trials?"),
    (["search", "--trials", "ten"], "nas search: error: argument --trials: invalid int value: 'ten'"),
    (["serch"], "nas: error: argument COMMAND: invalid choice: 'serch' (choose from 'show', 'scale', 'space', "
                "'bench', 'train', 'search', 'trials', 'best', 'export', 'report'); did you mean search?"),
    (["trials", "--study", "s", "--fromat", "csv"], "nas trials: error: unrecognized arguments: --fromat csv; "
                                                     "did you mean --format?"),
    (["train", "tiny", "--epcohs", "2", "--devise", "cpu"],
     "nas train: error: unrecognized arguments: --epcohs 2 --devise cpu; did you mean --epochs (for --epcohs), "
     "--device (for --devise)?"),
    (["search", "--controller", "rll"], "nas search: error: argument --controller: invalid choice: 'rll' (choose "
                                        "from 'evolution', 'random', 'rl', 'tpe'); did you mean rl?"),
    (["--verison"], "nas: error: unrecognized arguments: --verison; did you mean --version?"),
])
def test_usage_errors_are_one_line_with_the_nearest_valid_input(capsys, argv, first_line):
    lines = _usage_error(capsys, *argv)
    command = "nas" if argv[0].startswith("-") or argv[0] == "serch" else f"nas {argv[0]}"
    assert lines == [first_line, f"see {command} --help"]


def _command_parsers() -> dict:
    from nas.parser import build_parser

    parser = build_parser()
    assert set(parser.commands) == {"show", "scale", "space", "bench", "train", "search", "trials", "best",
                                    "export", "report"}
    return parser.commands


def test_every_command_has_a_description_and_every_option_help_that_shows_its_default():
    import argparse

    for name, parser in _command_parsers().items():
        assert parser.description, f"nas {name} has no description"
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"nas {name} {action.option_strings or action.dest} has no help"
            shown = formatter._expand_help(action)
            default = action.default
            has_default = not (default is None or default is False or default is argparse.SUPPRESS or default == [])
            if action.option_strings and has_default:
                assert "default" in shown, f"nas {name} {action.option_strings}: the default is not shown: {shown!r}"


def test_help_shows_the_real_defaults_of_the_recipe_and_the_campaign_and_lists_the_presets():
    from nas.campaign import CampaignConfig
    from nas.parser import build_parser
    from nas.progressive import ProgressiveConfig
    from nas.recipe import TrainConfig

    commands = _command_parsers()
    recipe, table6, campaign = TrainConfig(), ProgressiveConfig(), CampaignConfig()
    train_help = " ".join(commands["train"].format_help().split())
    for flag in ("--lr LR", "--batch-size BATCH_SIZE", "--warmup-steps WARMUP_STEPS"):  # resolved for the data
        assert re.search(rf"{re.escape(flag)} [^-]*\(default: auto, ", train_help), flag
    for flag, value in (("--epochs EPOCHS", recipe.epochs), ("--augment {auto,crop_flip,crop,resized_crop_flip,"
                                                                "resized_crop,none}", recipe.augment),
                        ("--optimizer {sgd,adamw,rmsprop}", recipe.optimizer),
                        ("--image-size-range MIN MAX", f"{table6.image_size[0]} {table6.image_size[1]}")):
        assert re.search(rf"{re.escape(flag)} [^-]*\(default: {re.escape(str(value))}\)", train_help), flag
    search_help = " ".join(commands["search"].format_help().split())
    assert f"(default: the --config file's, else {campaign.trials})" in search_help
    assert f"(default: the --config file's, else {campaign.controller})" in search_help
    assert f"(default: the --config file's, else {campaign.train.epochs})" in search_help
    for name in ("scale", "bench", "train", "show"):
        spec_help = " ".join(commands[name].format_help().split())
        assert all(preset in spec_help for preset in presets.names()), name
    top = build_parser().format_help()
    assert "``" not in top and "nas COMMAND --help" in top


def test_building_the_parser_imports_no_workshop():
    import subprocess
    import sys

    # Nor the ledger's libraries: optuna (through nas.controllers) and pandas (through nas.trials) took half a
    # second of every command's start, nas --help's included (issue 15).
    code = ("import sys\nfrom nas.parser import build_parser\nbuild_parser().format_help()\n"
            "print(sorted(m for m in ('torch', 'ray', 'matplotlib', 'optuna', 'pandas', 'sqlalchemy') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def _packages(nodes: object) -> set[str]:
    """The top-level packages the import statements among ``nodes`` import."""
    import ast

    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_cli_imports_no_optuna_anywhere_and_no_torch_at_import():
    """DESIGN.md: the CLI reads and writes a study through nas.study and nas.trials, never Optuna itself, and
    imports torch only inside the commands that train or time."""
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[2] / "nas" / "cli.py").read_text())
    assert "optuna" not in _packages(ast.walk(tree))  # inside functions too
    at_import = _packages(tree.body)
    assert "torch" not in at_import and "nas" in at_import  # the check sees the module's own imports
