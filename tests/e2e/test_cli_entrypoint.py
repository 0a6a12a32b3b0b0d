"""The ``nas`` command as a user runs it: a separate process, its exit status and its two output streams."""

from __future__ import annotations

import shlex
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

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


@pytest.mark.parametrize("argv", [["show", "tiny", "--json"], ["space", "tiny", "--sample", "3"],
                                  ["scale", "tiny", "--width", "2"], ["--help"]])
def test_a_reader_that_closes_the_output_early_ends_the_command_quietly(tmp_path, argv):
    """``nas show --json | head`` ended with "nas show: error: [Errno 32] Broken pipe" (issue 15). Here the reader
    is gone before the command writes: the command ends with no message and 141 (128 + SIGPIPE, as a shell reports
    `git log | head`'s git); argparse's --help swallows the error itself and exits 0."""
    process = subprocess.Popen([sys.executable, "-m", "nas", *argv], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    status = process.wait(timeout=120)
    process.stderr.close()
    assert err == ""
    assert status in ((0, cli.EXIT_BROKEN_PIPE) if argv == ["--help"] else (cli.EXIT_BROKEN_PIPE,))


def test_nas_piped_into_head_ends_without_a_broken_pipe_message(tmp_path):
    """Output larger than the pipe's buffer, read by `head -c 10`: the command's later writes find no reader."""
    command = (f"{shlex.quote(sys.executable)} -m nas space tiny --sample 2000 2>err.txt | head -c 10 >/dev/null; "
               "echo ${PIPESTATUS[0]}")
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == str(cli.EXIT_BROKEN_PIPE), result.stderr
    assert (tmp_path / "err.txt").read_text() == ""
