"""DESIGN.md section 1: data flows one way. search_spaces and rewards are plain data and pure functions; the
ledger (the trial record, the recipe, storage, study, trials table, campaign policy, controllers) imports neither
torch nor Ray; Ray is imported by the Ray executor alone; nothing imports the CLI; reading a study imports no torch;
nas/ has no import cycle (``TYPE_CHECKING`` and function-local imports included); and nas/study.py with
nas/storage.py is the one writer of a study and the one user of Optuna's private attributes."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("torch", "ray", "optuna", "nas")
LEDGER = ("nas.records", "nas.recipe", "nas.progressive", "nas.scaling", "nas.sources", "nas.storage", "nas.study",
          "nas.trials", "nas.campaign", "nas.controllers", "nas.step_cache", "nas.states", "nas.outputs",
          "nas.halving", "nas.report", "nas.figures")

EXERCISES = {
    "search_spaces": "from search_spaces import presets, io\nio.spec_to_yaml(presets.get_space('tiny').sample(0))",
    "rewards": "import rewards\nrewards.training_aware_reward(0.5, 1.0, 1.0, step_time_ref=1.0, params_ref=1.0)",
}


def loaded(code: str, names: tuple[str, ...] = FRAMEWORKS, cwd: Path = ROOT) -> list[str]:
    """Which of ``names`` are imported after running ``code`` in a fresh interpreter."""
    report = f"\nimport sys\nprint(','.join(m for m in {names!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, check=True,
                            cwd=cwd, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return [name for name in result.stdout.splitlines()[-1].split(",") if name]


@pytest.mark.parametrize("package", EXERCISES)
def test_package_imports_no_framework(package):
    assert loaded(EXERCISES[package]) == []


def test_the_check_sees_a_framework_import():
    assert loaded("import torch") == ["torch"]


def test_the_ledger_imports_neither_torch_nor_ray():
    assert loaded("\n".join(f"import {module}" for module in LEDGER), ("torch", "ray")) == []


def test_reading_a_study_from_the_command_line_imports_no_torch(tmp_path):
    make = ("import optuna\nfrom nas import records\nfrom search_spaces import presets\n"
            "study = optuna.create_study(study_name='s', storage='sqlite:///s.db')\ntrial = study.ask()\n"
            "for key, value in records.started_attributes('baseline', presets.get_space('tiny').baseline, "
            "'random').items():\n    trial.set_user_attr(key, value)\nstudy.tell(trial, 0.5)\n")
    subprocess.run([sys.executable, "-c", make], cwd=tmp_path, check=True, env={"PYTHONPATH": str(ROOT)})
    for command in (["trials", "--study", "s"], ["best", "--study", "s"], ["export", "--study", "s"],
                    ["report", "--study", "s", "-o", "report"]):
        code = (f"from nas.cli import main\nimport contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()), "
                f"contextlib.redirect_stderr(io.StringIO()):\n    main({command + ['--storage', 'sqlite:///s.db']!r})")
        assert loaded(code, ("torch", "ray"), cwd=tmp_path) == [], command


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_ray_is_imported_by_the_ray_executor_alone_and_nothing_imports_the_cli():
    modules = {path.relative_to(ROOT).as_posix(): imports_of(path) for path in sorted(ROOT.glob("nas/**/*.py"))}
    assert [name for name, imports in modules.items() if any(i.split(".")[0] == "ray" for i in imports)] == [
        "nas/runner.py"]
    assert [name for name, imports in modules.items() if "nas.cli" in imports] == ["nas/__main__.py"]


# --- the import graph of nas/ -----------------------------------------------------------------------------------


def module_files(root: Path, package: str = "nas") -> dict[str, Path]:
    """Every module of ``package`` under ``root`` by its dotted name (a package by its own name, for __init__)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph(root: Path, package: str = "nas") -> dict[str, set[str]]:
    """Which modules of ``package`` each of its modules imports: every import statement anywhere in the file
    (under ``if TYPE_CHECKING:`` and inside functions too), ``from nas import x`` read as the module ``nas.x``.

    Importing ``nas.a.b`` also runs the package ``nas.a``'s ``__init__``; that implicit edge is not counted, or
    every package whose ``__init__`` gathers its submodules would be a cycle."""
    modules = module_files(root, package)
    graph = {}
    for name, path in modules.items():
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = own_package.split(".")[: len(own_package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                               for alias in node.names)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None when it has none (depth-first search)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            cycle = visit(target, path + [node])
            if cycle is not None:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle is not None:
            return cycle
    return None


def test_nas_has_no_import_cycle():
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, "import cycle in nas/: " + " -> ".join(cycle)


def plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_cycle_check_sees_type_checking_local_and_package_relative_imports(tmp_path):
    root = plant(tmp_path, {
        "nas/__init__.py": "",
        "nas/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from nas.b import B\n",
        "nas/b.py": "def f():\n    from nas import c\n",
        "nas/c.py": "from .sub import leaf\n",
        "nas/sub/__init__.py": "",
        "nas/sub/leaf.py": "import nas.a\nimport optuna\n",
    })
    assert import_graph(root) == {"nas": set(), "nas.a": {"nas.b"}, "nas.b": {"nas.c"}, "nas.c": {"nas.sub.leaf"},
                                  "nas.sub": set(), "nas.sub.leaf": {"nas.a"}}
    assert find_cycle(import_graph(root)) == ["nas.a", "nas.b", "nas.c", "nas.sub.leaf", "nas.a"]
    (root / "nas/sub/leaf.py").write_text("import optuna\n")
    assert find_cycle(import_graph(root)) is None


# --- the one writer of a study ----------------------------------------------------------------------------------

#: The modules that may write to an Optuna study and touch Optuna's private attributes (DESIGN.md, the ledger).
STUDY_WRITERS = ("nas/study.py", "nas/storage.py")
#: Calls that change a study or its trials, on whatever object (a Study, a Trial, a storage).
STUDY_WRITES = {"set_user_attr", "set_system_attr", "enqueue_trial", "add_trial", "add_trials", "create_new_study",
                "delete_study", "create_new_trial", "set_trial_param", "set_trial_state_values",
                "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr", "set_study_user_attr",
                "set_study_system_attr"}
#: Calls that change a study when made on a study or a trial (``file.tell()`` and ``tune.report()`` do not).
STUDY_OR_TRIAL_WRITES = {"tell", "report"}
OPTUNA_OBJECT = re.compile(r"study|trial|storage", re.IGNORECASE)


def optuna_private_names() -> set[str]:
    """The single-underscore attributes of Optuna's study, trial, frozen trial and storages, read off live objects
    (instance attributes such as ``_storage`` and ``_trial_id``) and their classes (private methods)."""
    import optuna

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    study.tell(trial, 0.0)
    objects = [study, trial, study.trials[0], study._storage]
    names = {name for thing in objects for name in [*vars(thing), *dir(type(thing))]}
    names |= set(dir(optuna.storages.BaseStorage)) | set(dir(optuna.storages.RDBStorage))
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def receiver_name(node: ast.expr) -> str | None:
    """The last name of the object an attribute is taken on: ``study`` in ``self.study._x``; None for a call,
    a subscript and the like."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def is_own(node: ast.expr) -> bool:
    """``self``/``cls``/``super()``: a class's own private attribute, not another library's."""
    return (isinstance(node, ast.Name) and node.id in ("self", "cls")) or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super")


def private_accesses(path: Path, private_names: set[str]) -> list[str]:
    """``FILE:LINE: receiver._name`` for every Optuna private attribute ``path`` takes on another object: a name
    Optuna's objects have, or any single-underscore name taken on something called study, trial or storage."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Attribute) or is_own(node.value):
            continue
        name, receiver = node.attr, receiver_name(node.value)
        if not name.startswith("_") or name.startswith("__"):
            continue
        if name in private_names or (receiver is not None and OPTUNA_OBJECT.search(receiver)):
            found.append(f"{path.name}:{node.lineno}: {receiver or '...'}.{name}")
    return found


def study_writes(path: Path) -> list[str]:
    """``FILE:LINE: receiver.call`` for every call in ``path`` that changes a study or its trials."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name, receiver = node.func.attr, receiver_name(node.func.value)
        on_study = receiver is not None and OPTUNA_OBJECT.search(receiver) is not None
        if name in STUDY_WRITES or (name in STUDY_OR_TRIAL_WRITES and on_study):
            found.append(f"{path.name}:{node.lineno}: {receiver or '...'}.{name}")
    return found


def outside_the_writers(root: Path) -> list[Path]:
    return [path for path in sorted((root / "nas").rglob("*.py"))
            if path.relative_to(root).as_posix() not in STUDY_WRITERS]


def test_only_the_study_and_storage_touch_optuna_private_attributes():
    names = optuna_private_names()
    assert {"_storage", "_trial_id", "_study_id", "_cached_frozen_trial"} <= names
    assert [access for path in outside_the_writers(ROOT) for access in private_accesses(path, names)] == []


def test_only_the_study_and_storage_write_to_a_study():
    assert [write for path in outside_the_writers(ROOT) for write in study_writes(path)] == []


def test_the_checks_see_a_planted_private_access_and_write(tmp_path):
    root = plant(tmp_path, {
        "nas/study.py": "study._storage.set_trial_user_attr(trial._trial_id, 'k', 1)\n",
        "nas/policy.py": ("def judge(self, frozen, handle, table):\n"
                          "    self._storage, self.study._thread_local, frozen._cached_frozen_trial\n"
                          "    handle.tell(), table[0]._asdict(), super()._check(), self._own()\n"
                          "    self.pending_trial._anything\n"
                          "    self.study.tell(1, 0.5)\n"
                          "    frozen.set_user_attr('k', 1)\n"),
    })
    names = optuna_private_names()
    assert sorted(access for path in outside_the_writers(root) for access in private_accesses(path, names)) == [
        "policy.py:2: frozen._cached_frozen_trial", "policy.py:2: study._thread_local",
        "policy.py:4: pending_trial._anything"]
    assert sorted(write for path in outside_the_writers(root) for write in study_writes(path)) == [
        "policy.py:5: study.tell", "policy.py:6: frozen.set_user_attr"]
