"""benchmarks/gpu_check.sh: every step wired (a dry run on this CPU), a failing or hanging step is one FAIL row
while the check goes on, and the benchmark scripts' --json results read into rows (canned, as on a GPU)."""

import importlib.util
import json
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


# Canned --json results of the scripts a GPU run calls (the shapes the scripts print; see their main()).
CANNED = {
    "step_fused_placement": {"device": "cuda:0 H100", "image_size": 380, "batch_size": 32, "amp": "auto", "rows": [
        {"placement": "no fused", "images_per_second": 410.123}, {"placement": "fused stages 1-3",
                                                                  "images_per_second": 520.5}]},
    "step_bench_trainer": {"loops": [
        {"loop": "plain: DataLoader, per-sample Python augmentation, NCHW", "images_per_second": 1234.4,
         "vs_plain": 1.0},
        {"loop": "ours: on-device data and augmentation, channels_last", "images_per_second": 9876.0,
         "vs_plain": 8.0004}]},
    "step_bench_stability": {"space": "efficientnetv2-s", "image_size": 128, "batch_size": 64, "pairs": 5,
                             "specs": [{}, {}, {}, {}],
                             "paired": {"median_change": 0.012, "max_change": 0.031, "spearman": 1.0,
                                        "targets_met": True},
                             "unpaired": {"median_change": 0.2, "max_change": 0.5, "spearman": 0.4,
                                          "targets_met": False}},
    "step_timing_settings": {"groups": [
        {"name": "tiny space", "spearman": 0.952, "kendall_tau_b": 0.857, "order_flips": 2, "pairs": 28},
        {"name": "EfficientNet-B4, Fused-MBConv placement", "spearman": 1.0, "kendall_tau_b": 1.0, "order_flips": 0,
         "pairs": 6}]},
}
EXPECTED = {
    "step_fused_placement": "train img/s at 380px batch 32: no fused 410.12, fused stages 1-3 520.50",
    "step_bench_trainer": "img/s plain 1,234 (1.00x), ours 9,876 (8.00x)",
    "step_bench_stability": "paired: median |change| 1.2%, max |change| 3.1%, Spearman 1.000, targets met; unpaired: "
                            "median |change| 20.0%, max |change| 50.0%, Spearman 0.400 (4 specs, efficientnetv2-s "
                            "space, 128px, batch 64, 5 pairs)",
    "step_timing_settings": "tiny space: Spearman 0.952, Kendall tau-b 0.857, 2 of 28 pairs flip; EfficientNet-B4, "
                            "Fused-MBConv placement: Spearman 1.000, Kendall tau-b 1.000, 0 of 6 pairs flip",
}


@pytest.mark.parametrize("function", sorted(CANNED))
def test_a_gpu_run_reads_each_scripts_json_into_its_row(gpu_check, monkeypatch, function):
    calls = []

    def run_script(arguments):
        calls.append(arguments)
        return json.dumps(CANNED[function]) + "\n"

    monkeypatch.setattr(gpu_check, "_run_script", run_script)
    step = next(step for step in gpu_check.STEPS if step.function.__name__ == function)
    context = gpu_check.Context(step, dry_run=False, device="cuda", rows_file=None)
    step.function(context)
    [arguments] = calls
    assert arguments[-1] == "--json" and arguments[arguments.index("--device") + 1] == "cuda"
    assert [(row.status, row.result) for row in context.rows] == [("ok", EXPECTED[function])]


def test_a_script_that_prints_no_json_is_a_fail_row_naming_it(gpu_check, monkeypatch):
    monkeypatch.setattr(gpu_check, "_run_script", lambda arguments: "a table for people\n")
    step = next(step for step in gpu_check.STEPS if step.name == "timing-settings")
    rows = gpu_check.run_worker(step.name, dry_run=False, device="cuda", rows_file=None)
    assert [row.status for row in rows] == ["FAIL"]
    assert rows[0].result.startswith("`benchmarks/bench_timing_settings.py --device cuda")
    assert "printed no JSON object" in rows[0].result
