"""A campaign's own Ray head (issue 25): in a session of its own, joinable, and never outliving the driver.

The processes of a session are found in /proc (Linux, as CI): a head is gone when no process is left in it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nas import ray_head
from nas.ray_head import ADDRESS_FILE, HeadStartError, LocalHead


def session_members(session: int) -> list[int]:
    """The processes whose session id is ``session`` (zombies included: they are not gone yet)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended while we looked
                continue
            if int(fields[3]) == session:  # after the command: state, ppid, pgrp, session
                members.append(int(entry.name))
    return members


def wait_until_empty(session: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (members := session_members(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return members


def test_a_head_runs_in_its_own_session_and_stop_ends_every_process_of_it():
    head = LocalHead.start()
    try:
        session = head.supervisor.pid
        assert os.getsid(session) == session != os.getsid(0)  # a signal to our group does not reach it
        address = (head.temp_dir / ADDRESS_FILE).read_text().strip()  # what ray.init(_temp_dir=...) joins
        assert head.temp_dir.name == f"nas-{os.getpid()}-{address.rsplit(':', 1)[1]}"  # one per head
        assert len(session_members(session)) >= 3  # the supervisor, `ray start`, and Ray's own processes
    finally:
        stopping = time.monotonic()
        head.stop()
    assert time.monotonic() - stopping < ray_head.STOP_TIMEOUT_S  # `ray start` stopped: no deadline was needed
    assert wait_until_empty(session, timeout=2) == []


DRIVER = textwrap.dedent("""
    import sys, time
    from nas.ray_head import LocalHead
    head = LocalHead.start()
    print(head.supervisor.pid, flush=True)
    time.sleep(600)
""")


def test_a_driver_killed_by_sigkill_takes_its_head_with_it():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        session = int(driver.stdout.readline())
        assert len(session_members(session)) >= 3
    finally:
        driver.kill()
        driver.wait()
    assert wait_until_empty(session, timeout=20) == []  # Ray's agents included, which a dead `ray start` leaves


def test_a_ray_start_that_dies_takes_what_it_started_with_it():
    """`ray start` killed (the OOM killer, say) leaves Ray's agents running; the supervisor ends them."""
    head = LocalHead.start()
    session = head.supervisor.pid
    try:
        ray_start = [pid for pid in session_members(session)
                     if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == session]
        assert len(ray_start) == 1
        os.kill(ray_start[0], signal.SIGKILL)
        head.supervisor.wait(timeout=5)  # the supervisor ended its session, itself included
        assert wait_until_empty(session, timeout=5) == []
    finally:
        head.stop()


def fake_ray(monkeypatch: pytest.MonkeyPatch, program: str) -> None:
    """`ray` becomes ``program`` (what the supervisor runs in place of `ray start`)."""
    monkeypatch.setattr(ray_head, "_RAY", [sys.executable, "-c", program])
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no `ray get-auth-token` either


def test_a_head_that_ends_before_it_can_be_joined_is_an_error_with_what_it_printed(monkeypatch):
    fake_ray(monkeypatch, "import sys; print('ray: port 6379 is taken', flush=True); sys.exit(3)")
    with pytest.raises(HeadStartError, match=r"(?s)local Ray head \(ray start --head .*\) ended; it printed:\n"
                                             r".*ray: port 6379 is taken"):
        LocalHead.start()


def test_a_head_that_never_comes_up_is_an_error_after_the_timeout_and_leaves_nothing_running(monkeypatch):
    started = time.monotonic()
    fake_ray(monkeypatch, "import os, time; print(os.getsid(0), flush=True); time.sleep(600)")
    with pytest.raises(HeadStartError, match=r"did not start in 1 s; it printed:\n(\d+)") as raised:
        LocalHead.start(timeout_s=1)
    assert time.monotonic() - started < 10
    session = int(str(raised.value).rsplit("\n", 1)[1])
    assert wait_until_empty(session, timeout=5) == []


@pytest.mark.parametrize("environ, token_file, needed", [
    ({}, False, True),  # a fresh machine: Ray would run without authentication, so a token is made first
    ({}, True, False),
    ({"RAY_AUTH_MODE": "disabled"}, False, False),  # the user's choice, left to Ray
    ({"RAY_AUTH_TOKEN": "f" * 64}, False, False),
    ({"RAY_AUTH_TOKEN_PATH": "{home}/elsewhere"}, True, False),
])
def test_a_token_is_made_only_where_ray_would_otherwise_run_without_one(tmp_path, monkeypatch, environ, token_file,
                                                                          needed):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "elsewhere").write_text("f" * 64)
    if token_file:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("f" * 64)
    environ = {name: value.format(home=tmp_path) for name, value in environ.items()}
    assert ray_head._needs_token(environ) is needed


@pytest.mark.parametrize("environ, platform, root", [
    ({}, "linux", "/tmp/ray"),
    ({"TMPDIR": "/scratch"}, "linux", "/scratch/ray"),
    ({"TMPDIR": "/var/folders/x/T"}, "darwin", "/tmp/ray"),  # macOS's long TMPDIR would overflow socket paths
    ({"RAY_TMPDIR": "/fast", "TMPDIR": "/scratch"}, "darwin", "/fast/ray"),
])
def test_heads_live_where_ray_keeps_its_temp_directories(environ, platform, root):
    assert ray_head._ray_temp_root(environ, platform) == Path(root)
