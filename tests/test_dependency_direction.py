"""DESIGN.md section 1: data flows one way. search_spaces and rewards are plain data and pure functions; the
ledger (the trial record, the recipe, storage, study, trials table, campaign policy, controllers) imports neither
torch nor Ray; Ray is imported by the Ray executor alone; nothing imports the CLI; reading a study imports no torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("torch", "ray", "optuna", "nas")
LEDGER = ("nas.records", "nas.recipe", "nas.progressive", "nas.scaling", "nas.sources", "nas.storage", "nas.study",
          "nas.trials", "nas.campaign", "nas.controllers", "nas.step_cache")

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
    for command in (["trials", "--study", "s"], ["best", "--study", "s"], ["export", "--study", "s"]):
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
