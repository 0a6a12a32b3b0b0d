"""Reading YAML files: a key given twice in one mapping is refused, naming the key and both lines, at any depth and
for spec, space and campaign files alike; ``safe_load``'s data, ``<<`` merges and refusals are otherwise unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
