"""Reference architectures and search spaces shipped as YAML data, loaded by name.

Spec presets are ``<name>.yaml``; search spaces are ``<name>-space.yaml`` and load as ``get_space("<name>")``.
Wherever a command takes a spec or a space, it takes either a preset name or a file path (:func:`resolve_spec`,
:func:`get_space`).
"""

from __future__ import annotations

from pathlib import Path

from search_spaces.io import load_spec, read_yaml_mapping
from search_spaces.space import SearchSpace, SpaceError
from search_spaces.spec import ArchSpec, SpecError

PRESET_DIR = Path(__file__).resolve().parent
_SPACE_SUFFIX = "-space.yaml"


def names() -> list[str]:
    """Names of the shipped reference architectures."""
    return sorted(p.name[: -len(".yaml")] for p in PRESET_DIR.glob("*.yaml") if not p.name.endswith(_SPACE_SUFFIX))


def space_names() -> list[str]:
    """Names of the shipped search spaces."""
    return sorted(p.name[: -len(_SPACE_SUFFIX)] for p in PRESET_DIR.glob(f"*{_SPACE_SUFFIX}"))


def get(name: str) -> ArchSpec:
    """The reference architecture called ``name`` (see :func:`names`)."""
    if name not in names():
        raise SpecError(f"unknown preset {name!r}; available presets: {', '.join(names())}")
    return load_spec(PRESET_DIR / f"{name}.yaml")


def resolve_spec(name_or_path: str | Path) -> ArchSpec:
    """A spec from a preset name or a spec file path; a name that is neither gives the available presets."""
    if str(name_or_path) in names():
        return get(str(name_or_path))
    path = Path(name_or_path)
    if path.is_file():
        return load_spec(path)
    raise FileNotFoundError(
        f"{str(name_or_path)!r} is neither a spec file nor a preset; available presets: {', '.join(names())}"
    )


def get_space(name_or_path: str | Path) -> SearchSpace:
    """A search space from a shipped name (see :func:`space_names`) or a space file path."""
    if str(name_or_path) in space_names():
        return load_space(PRESET_DIR / f"{name_or_path}{_SPACE_SUFFIX}")
    if Path(name_or_path).is_file():
        return load_space(Path(name_or_path))
    raise FileNotFoundError(
        f"{str(name_or_path)!r} is neither a search-space file nor a shipped space; "
        f"available spaces: {', '.join(space_names())}"
    )


def load_space(path: Path) -> SearchSpace:
    """Loads a space file; a string backbone is a spec path relative to the file, or a preset name."""
    data = read_yaml_mapping(path, "search-space")

    def resolve_backbone(reference: str) -> ArchSpec:
        relative = path.parent / reference
        return load_spec(relative) if relative.is_file() else resolve_spec(reference)

    try:
        return SearchSpace.from_dict(data, resolve_backbone=resolve_backbone)
    except (SpecError, FileNotFoundError) as error:
        raise SpaceError(f"{path}: {error}") from None
