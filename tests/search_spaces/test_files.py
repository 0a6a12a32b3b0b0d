"""The one safe-write helper and the file lock: no planted link is followed, no temporary file is shared, a failed
write leaves the old file, a killed writer's temporary file is removed by the next write and a live one's never,
and a lock names its holder and dies with it."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from search_spaces import files
from search_spaces.files import FileLock, LockHeldError, check_output, write_file


def test_writes_bytes_text_and_a_writer_atomically_with_the_umask_mode(tmp_path):
    write_file(tmp_path / "a.bin", b"\x00\x01")
    write_file(tmp_path / "b.txt", "héllo")
    write_file(tmp_path / "sub" / "c.bin", lambda file: file.write(b"streamed"))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "sub" / "c.bin").read_bytes() == b"streamed"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.bin", "b.txt", "sub"]  # no temporary left


def test_a_link_planted_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "out.yaml").symlink_to(victim)
    write_file(tmp_path / "out.yaml", "new")
    assert victim.read_text() == "keep"
    assert not (tmp_path / "out.yaml").is_symlink() and (tmp_path / "out.yaml").read_text() == "new"


@pytest.mark.parametrize("name", ["spec.yaml", "ck.pt", "weights.pt", "result.json", "report.html", "model.onnx"])
def test_links_planted_at_temporary_names_are_never_written_through(tmp_path, monkeypatch, name):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / f".{name}.tmp").symlink_to(victim)  # the fixed temporary name of earlier versions
    prefix = f"{files._writer_prefix(tmp_path / name)}{os.getpid()}"
    planted = tmp_path / f"{prefix}.planted.tmp"
    planted.symlink_to(victim)
    draws = iter(["planted", "fresh"])  # the first random name drawn is one an attacker planted a link at
    monkeypatch.setattr(files.secrets, "token_hex", lambda size: next(draws))
    write_file(tmp_path / name, b"data")
    assert victim.read_text() == "keep" and (tmp_path / name).read_bytes() == b"data"
    assert planted.is_symlink() and not (tmp_path / f"{prefix}.fresh.tmp").exists()


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "ck.pt"
    target.write_bytes(b"old")

    def disk_full(file):
        file.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_file(target, disk_full)
    assert target.read_bytes() == b"old" and [path.name for path in tmp_path.iterdir()] == ["ck.pt"]


def test_concurrent_writers_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "ck.pt"
    payloads = [bytes([index]) * 200_000 for index in range(8)]
    errors = []

    def write(payload):
        try:
            for _ in range(10):
                write_file(target, payload)
        except Exception as error:  # collected: a thread's exception would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=write, args=(payload,)) for payload in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and target.read_bytes() in payloads  # one whole payload, never a mix
    assert [path.name for path in tmp_path.iterdir()] == ["ck.pt"]


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped): what a killed writer's leftover names."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_temporary_file_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "tradeoffs.png"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom search_spaces.files import write_file\n"
         "def stall(file):\n    file.write(b'half')\n    file.flush()\n    print('writing', flush=True)\n"
         "    time.sleep(600)\n"
         f"write_file({str(target)!r}, stall)\n"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.kill()
        writer.wait()
    leftovers = [path.name for path in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tradeoffs.png.")  # what `nas report` killed left
    write_file(target, b"png")
    assert [path.name for path in tmp_path.iterdir()] == ["tradeoffs.png"]


def test_only_regular_temporary_files_of_the_target_left_by_dead_writers_on_this_host_are_removed(tmp_path):
    """Kept: a live writer's file (this process, a running child), a link or a directory at a dead writer's name
    (never followed), another target's or another host's leftover, a name off the exact pattern."""
    target = tmp_path / "ck.pt"
    prefix = files._writer_prefix(target)
    dead = _dead_pid()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    live_child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        removed = [f"{prefix}{dead}.0123456789ab.tmp", f"{prefix}{dead}.ba9876543210.tmp"]
        kept_files = [
            f"{prefix}{os.getpid()}.0123456789ab.tmp",  # this process: another thread may be writing it
            f"{prefix}{live_child.pid}.0123456789ab.tmp",
            f"{files._writer_prefix(tmp_path / 'other.pt')}{dead}.0123456789ab.tmp",  # another target
            f".ck.pt.00000000.{dead}.0123456789ab.tmp",  # another host: its PIDs cannot be checked here
            f"{prefix}{dead}.0123456789AB.tmp", f"{prefix}{dead}.0123456789ab.tmp.x", f"{prefix}0.0123456789ab.tmp",
            ".ck.pt.0123456789ab.tmp",  # earlier versions' name, without a writer
        ]
        for name in removed + kept_files:
            (tmp_path / name).write_bytes(b"half")
        link = tmp_path / f"{prefix}{dead}.111111111111.tmp"
        link.symlink_to(victim)
        directory = tmp_path / f"{prefix}{dead}.222222222222.tmp"
        directory.mkdir()
        (directory / "inside").write_text("keep")

        write_file(target, b"new")
    finally:
        live_child.kill()
        live_child.wait()
    names = {path.name for path in tmp_path.iterdir()}
    assert names == {"ck.pt", "victim", link.name, directory.name, *kept_files}
    assert link.is_symlink() and victim.read_text() == "keep" and (directory / "inside").read_text() == "keep"
    assert target.read_bytes() == b"new"


def test_overwrite_false_refuses_an_existing_file_or_link(tmp_path):
    (tmp_path / "a").write_text("keep")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("a", "dangling"):
        with pytest.raises(FileExistsError, match="--force"):
            write_file(tmp_path / name, "new", overwrite=False)
    assert (tmp_path / "a").read_text() == "keep" and not (tmp_path / "nowhere").exists()
    with pytest.raises(IsADirectoryError):
        write_file(tmp_path, "x")


def test_check_output_allows_any_place_and_refuses_what_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_output(tmp_path / "new" / "deeper" / "x.yaml", flag="-o", force=False) == tmp_path / "new/deeper/x.yaml"
    with pytest.raises(FileExistsError, match="-o .*file exists; pass --force"):
        check_output(tmp_path / "file", flag="-o", force=False)
    assert check_output(tmp_path / "file", flag="-o", force=True)
    with pytest.raises(NotADirectoryError, match="file is not a directory"):
        check_output(tmp_path / "file" / "x.yaml", flag="-o", force=True)
    with pytest.raises(NotADirectoryError, match="--save .* must be a directory"):
        check_output(tmp_path / "file", flag="--save", force=True, directory=True)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        check_output(tmp_path, flag="-o", force=True)


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_host(tmp_path):
    with FileLock(tmp_path / "ck.pt", what="checkpoint"):
        with pytest.raises(LockHeldError, match=rf"checkpoint .*ck.pt is in use by process {os.getpid()} on host "):
            FileLock(tmp_path / "ck.pt", what="checkpoint").acquire()
    assert not (tmp_path / "ck.pt.lock").exists()  # released and removed
    with FileLock(tmp_path / "ck.pt"):  # free again
        pass


def test_a_lock_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom search_spaces.files import FileLock\n"
         f"FileLock({str(tmp_path / 'ck.pt')!r}).acquire()\nprint('held', flush=True)\ntime.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError, match=f"process {holder.pid}"):
            FileLock(tmp_path / "ck.pt").acquire()
    finally:
        holder.kill()
        holder.wait()
    with FileLock(tmp_path / "ck.pt"):  # a killed holder leaves a lock file, but no lock
        pass
