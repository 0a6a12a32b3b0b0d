"""DESIGN.md section 1: search_spaces and rewards are plain data and pure functions; they import no framework."""

import subprocess
import sys

import pytest

FRAMEWORKS = ("torch", "ray", "optuna", "nas")

EXERCISES = {
    "search_spaces": "from search_spaces import presets, io\nio.spec_to_yaml(presets.get_space('tiny').sample(0))",
    "rewards": "import rewards\nrewards.training_aware_reward(0.5, 1.0, 1.0, step_time_ref=1.0, params_ref=1.0)",
}


def frameworks_loaded(code: str) -> list[str]:
    report = f"\nimport sys\nprint(','.join(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, check=True)
    return [name for name in result.stdout.strip().split(",") if name]


@pytest.mark.parametrize("package", EXERCISES)
def test_package_imports_no_framework(package):
    assert frameworks_loaded(EXERCISES[package]) == []


def test_the_check_sees_a_framework_import():
    assert frameworks_loaded("import torch") == ["torch"]
