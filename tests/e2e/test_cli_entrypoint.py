"""The ``nas`` command as a user runs it: a separate process, its exit status and its two output streams."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

from nas import cli
from search_spaces.io import load_spec


def nas(cwd, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nas", *argv], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_console_script_is_the_cli_main():
    (script,) = entry_points(group="console_scripts", name="nas")
    assert script.value == "nas.cli:main"
    assert script.load() is cli.main


def test_show_preset(tmp_path):
    result = nas(tmp_path, "show", "tiny")

    assert result.returncode == 0, result.stderr
    assert "parameters: " in result.stdout
    assert "FLOPs: " in result.stdout
    assert "Traceback" not in result.stderr


def test_missing_file_is_one_line_and_status_2(tmp_path):
    result = nas(tmp_path, "show", "missing.yaml")

    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nas show: error: ")
    assert "missing.yaml" in lines[0]
    assert "neither" in lines[0]


def test_no_arguments_prints_usage_and_fails(tmp_path):
    result = nas(tmp_path)

    assert result.returncode != 0
    assert "usage: nas" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error(tmp_path):
    result = nas(tmp_path, "train-forever")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "nas: error: argument COMMAND: invalid choice: 'train-forever' (choose from 'show', 'scale', 'space', "
        "'bench', 'train', 'search', 'trials', 'best', 'export', 'report')",
        "see nas --help",
    ]
    assert "Traceback" not in result.stderr


def test_scaled_spec_written_relative_to_the_working_directory_can_be_shown(tmp_path):
    scaled = nas(tmp_path, "scale", "tiny", "--width", "1.5", "--depth", "2", "-o", "tiny-wide.yaml")
    assert scaled.returncode == 0, scaled.stderr
    assert "wrote tiny-wide.yaml" in scaled.stdout
    spec = load_spec(tmp_path / "tiny-wide.yaml")

    shown = nas(tmp_path, "show", "tiny-wide.yaml")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == scaled.stdout.removesuffix("wrote tiny-wide.yaml\n")
    for block in spec.block_strings:
        assert block in shown.stdout
