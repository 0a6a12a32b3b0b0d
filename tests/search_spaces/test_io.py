"""Reading YAML files: a key given twice in one mapping is refused, naming the key and both lines, at any depth and
for spec, space and campaign files alike; a number with an exponent (``1e-9``) is a float, as in YAML 1.2;
``safe_load``'s data, ``<<`` merges and refusals are otherwise unchanged."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

from nas.campaign import load_campaign
from search_spaces import presets
from search_spaces.io import load_spec, parse_yaml, read_yaml_mapping
from search_spaces.spec import SpecError

PRESETS = Path(presets.__file__).parent


@pytest.mark.parametrize("text, words", [
    ("trials: 4\nspace: tiny\ntrials: 8\n", "duplicate key 'trials' at line 3, first given at line 1"),
    ("train:\n  epochs: 1\n  batch_size: 8\n  epochs: 2\n", "duplicate key 'epochs' at line 4, first given at line 2"),
    ("stages:\n- {op: mbconv, op: fused_mbconv}\n", "duplicate key 'op' at line 2, first given at line 2"),
    ("a: [[{x: 1}, {y: 1, y: 2}]]\n", "duplicate key 'y'"),
    ("space: tiny\n'space': other\n", "duplicate key 'space' at line 2"),  # quoted or not, one key
    ("1: a\n0x1: b\n", "duplicate key 1 at line 2"),  # compared as constructed, as safe_load's mapping does
    ("base: &b {k: 1}\nx:\n  <<: *b\n  k: 2\n  k: 3\n", "duplicate key 'k' at line 5, first given at line 4"),
    ("name: &n tiny\n*n : 1\ntiny: 2\n", "duplicate key 'tiny' at line 3"),
], ids=["top level", "nested", "flow mapping in a list", "deep in lists", "quoted", "same integer", "after a merge",
        "an alias as key"])
def test_a_duplicate_key_is_refused_naming_it_and_its_lines(text, words):
    with pytest.raises(SpecError) as error:
        parse_yaml(text, source="f.yaml")
    message = str(error.value)
    assert message.startswith("f.yaml: not valid YAML: ") and words in message and "\n" not in message


@pytest.mark.parametrize("text", [
    "base: &b {k: 1, j: 2}\nx:\n  <<: *b\n  k: 2\n",
    "b: &b {k: 1}\nx:\n  deep:\n    m: &m\n      <<: *b\n      k: 2\ny:\n  <<: *m\n  k: 3\n",
    "a: {k: 1}\nb: {k: 1}\nc: [{k: 1}, {k: 2}]\n",
    "a: &a {k: 1}\nb: *a\nc: *a\n",
], ids=["a key overriding a merged one", "a merge source merged again", "one key in several mappings", "aliases"])
def test_documents_without_duplicates_load_as_safe_load_loads_them(text):
    assert parse_yaml(text, source="f.yaml") == yaml.safe_load(text)


@pytest.mark.parametrize("text, words", [
    ("? [a, b]\n: 1\n", "found unhashable key"),
    ("!!python/object/apply:os.system ['true']\n", "python/object/apply:os.system"),
])
def test_other_refusals_are_unchanged(text, words):
    with pytest.raises(SpecError, match="not valid YAML") as error:
        parse_yaml(text, source="f.yaml")
    assert words in str(error.value)


def _duplicate(text: str, key: str) -> tuple[str, int]:
    """``text`` with its first line starting ``key:`` written twice, and the number of that line."""
    lines = text.splitlines(keepends=True)
    index = next(index for index, line in enumerate(lines) if line.startswith(f"{key}:"))
    return "".join(lines[:index + 1] + [lines[index]] + lines[index + 1:]), index + 1


@pytest.mark.parametrize("preset, key, what, load", [
    ("tiny.yaml", "stem_channels", "spec", load_spec),
    ("tiny-space.yaml", "backbone", "search-space", presets.load_space),
])
def test_spec_and_space_files_with_a_duplicate_key_are_refused(tmp_path, preset, key, what, load):
    text, line = _duplicate((PRESETS / preset).read_text(encoding="utf-8"), key)
    path = tmp_path / preset
    path.write_text(text, encoding="utf-8")
    message = f"{path}: not valid YAML: duplicate key '{key}' at line {line + 1}, first given at line {line}"
    for read in (lambda: read_yaml_mapping(path, what), lambda: load(path)):
        with pytest.raises(SpecError) as error:
            read()
        assert str(error.value) == message


@pytest.mark.parametrize("text, value", [
    ("1e-9", 1e-9), ("5E+3", 5000.0), ("-2e4", -20000.0), ("+3e0", 3.0), ("1.0e9", 1e9), (".5e3", 500.0),
    ("1_000e-3", 1.0),
], ids=["1e-9", "5E+3", "-2e4", "+3e0", "dot unsigned exponent", "no leading digit", "underscore"])
def test_a_number_with_an_exponent_is_a_float_as_in_yaml_1_2(tmp_path, text, value):
    path = tmp_path / "f.yaml"
    path.write_text(f"value: {text}\n{text}: key\nlist: [{text}]\n", encoding="utf-8")
    data = read_yaml_mapping(path, "campaign")
    assert data == {"value": value, value: "key", "list": [value]}
    assert all(type(number) is float for number in (data["value"], data["list"][0]))


@pytest.mark.parametrize("text, value", [
    ("'1e-9'", "1e-9"), ('"5E+3"', "5E+3"), ("!!str 1e-9", "1e-9"), ("1e", "1e"), ("e5", "e5"), ("1e-9x", "1e-9x"),
    ("1e2.5", "1e2.5"), ("0x1e5", 0x1E5), ("12", 12), ("-7", -7), ("1_000", 1000), ("1.0e-9", 1e-9), ("1.5", 1.5),
    (".inf", float("inf")), ("2001-12-14", date(2001, 12, 14)),
])
def test_other_scalars_beside_such_a_float_are_unchanged(text, value):
    """Quoted numbers stay strings, ints stay ints, YAML 1.1's floats and dates are as before, in a document whose
    ``1e-9`` is a float."""
    data = parse_yaml(f"value: {text}\nexponent: 1e-9\n", source="f.yaml")
    assert data == {"value": value, "exponent": 1e-9} and type(data["value"]) is type(value)


def test_the_global_safe_loader_is_unchanged():
    assert parse_yaml("value: 1e-9\n", source="f.yaml") == {"value": 1e-9}
    assert yaml.safe_load("value: 1e-9\n") == {"value": "1e-9"}


def test_spec_and_campaign_files_take_floats_written_with_an_exponent(tmp_path):
    text = (PRESETS / "tiny.yaml").read_text(encoding="utf-8")
    assert "bn_eps: 0.001\n" in text
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(text.replace("bn_eps: 0.001\n", "bn_eps: 1e-3\n"), encoding="utf-8")
    assert load_spec(spec_path) == load_spec(PRESETS / "tiny.yaml")
    campaign_path = tmp_path / "campaign.yaml"
    campaign_path.write_text("train:\n  learning_rate: 1e-9\n", encoding="utf-8")  # refused as '1e-9' before
    assert load_campaign(campaign_path).train.learning_rate == 1e-9
