"""benchmarks/gpu_check.sh: every step wired (a dry run on this CPU), and a failing or hanging step is one FAIL row
while the check goes on."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def gpu_check():
    """The Python half as a module (``benchmarks`` is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def run(*arguments, timeout=300):
    return subprocess.run(["bash", str(SCRIPT), *arguments], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHON": sys.executable})


def table_rows(text):
    """(step, result) of each row of the markdown table."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("step", "---"):
            rows.append((cells[0], cells[2]))
    return rows


def test_the_dry_run_wires_every_step(gpu_check, tmp_path):
    out = tmp_path / "gpu.md"
    completed = run("--dry-run", "--out", str(out), "--log-dir", str(tmp_path / "logs"))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    rows = table_rows(out.read_text())
    assert rows and table_rows(completed.stdout) == rows  # printed and written: the same table
    for name in gpu_check.STEP_NAMES:
        assert any(step == name or step.startswith(name + " ") for step, _ in rows), name
    for step, result in rows:
        assert "FAIL" not in result and "SKIP" not in result, (step, result)
        assert result.startswith("dry-run"), (step, result)
    assert (tmp_path / "logs" / "campaign.log").is_file()


def test_a_failing_or_hanging_step_is_one_fail_row_and_the_check_goes_on(tmp_path):
    out = tmp_path / "gpu.md"
    completed = run("--dry-run", "--steps", "device,fused-placement,bench-stability", "--fail-step", "device",
                    "--hang-step", "fused-placement", "--max-step-s", "12", "--out", str(out),
                    "--log-dir", str(tmp_path / "logs"))
    assert completed.returncode == 1, completed.stdout[-3000:] + completed.stderr[-3000:]
    rows = dict(table_rows(out.read_text()))
    assert list(rows) == ["device", "fused-placement", "bench-stability"]
    assert rows["device"] == "**FAIL** RuntimeError: injected failure (--fail-step)"
    assert rows["fused-placement"] == "**FAIL** timed out after 12 s (killed)"
    assert rows["bench-stability"].startswith("dry-run")


def test_an_existing_out_file_needs_force(tmp_path):
    out = tmp_path / "gpu.md"
    out.write_text("kept\n")
    completed = run("--dry-run", "--steps", "device", "--out", str(out), timeout=60)
    assert completed.returncode == 2 and "pass --force" in completed.stderr
    assert out.read_text() == "kept\n"
