"""YAML files for specs: the only place that knows the spec file format.

Only the loader of ``yaml.safe_load`` is used (``yaml.SafeLoader``, extended to refuse duplicate keys and to read
``1e-9`` as a float, as YAML 1.2 does), so a file can never construct Python objects. Files are read with a size cap
and parsed documents with a cap on their values once aliases are expanded, so that neither a huge file nor a small
"billion laughs" one (nested ``&anchor``/``*alias`` lists) can exhaust memory when the data is validated or
printed. A key given twice in one mapping is refused, as an unknown key is: ``safe_load`` would silently keep the
last one.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node

from search_spaces.files import write_file
from search_spaces.spec import ArchSpec, SpecError

# Specs, spaces and campaigns are a few KiB and a few hundred values; these caps are far above any real file.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000

# YAML 1.1, which PyYAML implements, reads a float only with a dot and a signed exponent (``1.0e-9``), so ``1e-9``,
# ``5E+3`` or ``1.0e9`` would be the string '1e-9'. YAML 1.2's core schema reads them as floats; so do we, for the
# forms with an exponent (those without one are floats in both). Underscores are allowed as in YAML 1.1's floats.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader``, the loader of ``yaml.safe_load`` (plain data only), refusing a mapping whose key
    appears twice: ``duplicate key 'trials' at line 7, first given at line 3``, and reading an unquoted number with
    an exponent (``1e-9``, ``5E+3``, ``-2e4``) as a float, as YAML 1.2 does (see :data:`_EXPONENT_FLOAT`).

    The check sits in ``flatten_mapping``, which sees every mapping (also one merged into another with ``<<``)
    before ``<<`` merges keys into it: a key a mapping writes itself is checked, a merged key it overrides is not.
    Keys are compared as constructed (``1`` and ``0x1`` are one key), as the mapping ``safe_load`` builds does.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._flattened: set[MappingNode] = set()

    def flatten_mapping(self, node: MappingNode) -> None:
        if node in self._flattened:  # flattened once already: it now holds the keys merged into it as well
            super().flatten_mapping(node)
            return
        self._flattened.add(node)
        written = [key for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"]
        super().flatten_mapping(node)  # also makes a "=" key a string, so that it can be constructed
        self._refuse_duplicates(written)

    def _refuse_duplicates(self, keys: list[Node]) -> None:
        lines: dict[Any, int] = {}
        for node in keys:
            key = self.construct_object(node)
            if not isinstance(key, Hashable):
                continue  # refused by construct_mapping with its own message ("found unhashable key")
            line = node.start_mark.line + 1
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r} at line {line}, first given at line {lines[key]}"
                )
            lines[key] = line


# Registered on this subclass only: ``add_implicit_resolver`` copies the inherited table before adding to it, so
# ``yaml.SafeLoader`` (and ``yaml.safe_load`` everywhere else) is unchanged. Appended after YAML 1.1's resolvers,
# which are tried first: a text one of them matches (an int, a date, ``1.0e-9``) resolves as before.
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))


def parse_yaml(text: str, *, source: str) -> Any:
    """``yaml.safe_load`` with duplicate keys refused, ``1e-9`` read as a float (YAML 1.2) and one-line errors that
    name the source; never constructs Python objects."""
    try:
        loader = _UniqueKeyLoader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError(f"{source}: not valid YAML: {error.problem or error.context}{where}") from None
    except yaml.YAMLError as error:
        raise SpecError(f"{source}: not valid YAML: {str(error).splitlines()[0]}") from None
    except RecursionError:
        raise SpecError(f"{source}: not valid YAML: nested too deeply") from None
    _check_expanded_size(data, source)
    return data


def _check_expanded_size(data: Any, source: str) -> None:
    """Refuses a document of more than :data:`MAX_YAML_VALUES` values, counting every use of an alias.

    ``safe_load`` shares one object among an anchor's aliases, so a 1 KiB file can describe 10^9 values that take
    no memory until something walks them (an error message's ``repr``, ``to_dict``). The walk stops at the cap.
    """
    count, pending = 0, [data]
    while pending:
        value = pending.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise SpecError(
                f"{source}: more than {MAX_YAML_VALUES:,} values once YAML aliases (*name) are expanded; "
                "a spec, space or campaign file holds far fewer"
            )
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """Reads a YAML file that must hold one mapping; errors name the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    with path.open("rb") as file:
        raw = file.read(MAX_YAML_BYTES + 1)
    if len(raw) > MAX_YAML_BYTES:
        raise SpecError(f"{path}: a {what} file must be at most {MAX_YAML_BYTES:,} bytes; this one is larger")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    data = parse_yaml(text, source=str(path))
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a {what} file must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def spec_to_yaml(spec: ArchSpec) -> str:
    """The spec as YAML text; stages are written one flow mapping per line for readability."""
    data = spec.to_dict()
    stages = data.pop("stages")
    head = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    stage_lines = "".join(
        f"- {yaml.safe_dump(stage, sort_keys=False, default_flow_style=True, width=1000).strip()}\n"
        for stage in stages
    )
    return f"{head}stages:\n{stage_lines}"


def spec_from_yaml(text: str, *, source: str = "<string>") -> ArchSpec:
    """Parses YAML text into a validated spec; unknown keys are rejected."""
    data = parse_yaml(text, source=source)
    try:
        return ArchSpec.from_dict(data)
    except SpecError as error:
        raise SpecError(f"{source}: {error}") from None


def load_spec(path: str | Path) -> ArchSpec:
    """Loads a spec file written by :func:`dump_spec` (or by hand)."""
    data = read_yaml_mapping(path, "spec")
    try:
        return ArchSpec.from_dict(data)
    except SpecError as error:
        raise SpecError(f"{path}: {error}") from None


def dump_spec(spec: ArchSpec, path: str | Path, *, overwrite: bool = True) -> None:
    """Writes ``spec`` to ``path`` through :func:`~search_spaces.files.write_file`: atomically, never through a
    planted link, refusing an existing file unless ``overwrite``."""
    write_file(path, spec_to_yaml(spec), overwrite=overwrite)


def timm_arch_def(spec: ArchSpec) -> list[str]:
    """The spec's stages as timm EfficientNet ``arch_def`` block strings, one stage per string.

    MBConv is timm's ``ir`` (``ds`` when it has no expansion), Fused-MBConv is ``er`` (``cn`` with ``_skip``
    when it has no expansion, as in timm's EfficientNetV2 definitions). timm's ``se`` ratio is relative to the
    block input, like ours. Stem and head widths are timm's ``stem_size`` and ``num_features`` arguments.
    """
    blocks = []
    for index, stage in enumerate(spec.stages, start=1):
        core = f"r{stage.num_layers}_k{stage.kernel_size}_s{stage.stride}_e{stage.expand_ratio}_c{stage.out_channels}"
        se = f"_se{stage.se_ratio:g}" if stage.se_ratio > 0 else ""
        if stage.op == "mbconv":
            blocks.append(f"{'ds' if stage.expand_ratio == 1 else 'ir'}_{core}{se}")
        elif stage.expand_ratio > 1:
            blocks.append(f"er_{core}{se}")
        elif se:
            raise SpecError(
                f"stage {index}: a Fused-MBConv without expansion but with squeeze-excitation has no timm block"
            )
        else:
            blocks.append(f"cn_{core}_skip")
    return blocks
