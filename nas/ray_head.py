"""A campaign's own local Ray head, in a session of its own: a signal sent to the driver's process group reaches the
driver, not Ray.

``kill -TERM -PGID``, systemd and cluster schedulers stop a job by signalling its whole process group. The processes
that ``ray.init()`` starts for a local Ray (GCS, raylet, ...) are in the driver's group, so they would die at once,
and the driver, which handles SIGTERM by stopping Tune and recording the trials in flight, would hang a minute on
a GCS that is gone and leave its trials RUNNING. Started here instead, by ``ray start --head --block`` in a new
session, Ray outlives the signal until the driver has recorded what was in flight and stops it.

Nothing outlives the driver. The session's leader is a small supervisor (this module run as a script) that holds
the read end of a pipe from the driver: when the driver stops the head or dies, however (SIGKILL included), the
pipe closes, the supervisor stops ``ray start`` (which stops the Ray processes it started) and then kills whatever
is left of the session (Ray's dashboard and runtime-env agents outlive a ``ray start`` that dies).

Each head has its own Ray temp directory (:attr:`LocalHead.temp_dir`, ``/tmp/ray/nas-PID-PORT`` with its logs), so
the driver finds this head there and a ``ray.init()`` elsewhere on the machine does not join it. Authentication is
Ray's default for a local Ray: token authentication with the token in ``~/.ray/auth_token``, made by ``ray
get-auth-token --generate`` when there is none; a ``RAY_AUTH_MODE`` the user set is left to Ray. Imports no Ray (the
``ray`` command does the work).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping

#: The file in a Ray temp directory that holds the address of the head last started there (Ray's own).
ADDRESS_FILE = "ray_current_cluster"
#: How long a head may take to start; a loaded 2-core machine takes about 5 s.
START_TIMEOUT_S = 120.0
#: How long the head may take to stop (about 2 s here) before its session is killed.
STOP_TIMEOUT_S = 10.0
_RAY = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]  # the `ray` command of this Python


class HeadStartError(RuntimeError):
    """The local Ray head did not start; the message ends with what ``ray start`` printed last."""


class LocalHead:
    """One supervised ``ray start --head --block`` (and the Ray processes it runs) in its own session, to be joined
    with ``ray.init(_temp_dir=str(head.temp_dir))``. :meth:`stop` ends it; so does the driver's exit, however it
    happens."""

    def __init__(self, supervisor: subprocess.Popen[str], temp_dir: Path) -> None:
        self.supervisor = supervisor
        self.temp_dir = temp_dir

    @classmethod
    def start(cls, *, timeout_s: float = START_TIMEOUT_S) -> LocalHead:
        """Starts a head at a free port and returns once it can be joined; raises :class:`HeadStartError` with
        ``ray start``'s last lines when it ends first or takes longer than ``timeout_s``."""
        if _needs_token(os.environ):
            subprocess.run([*_RAY, "get-auth-token", "--generate"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        port = _free_port()
        temp_dir = _ray_temp_root(os.environ) / f"nas-{os.getpid()}-{port}"
        ray_start = ["start", "--head", "--block", f"--port={port}", f"--temp-dir={temp_dir}",
                     "--include-dashboard=false", "--disable-usage-stats"]
        supervisor = subprocess.Popen([sys.executable, "-m", __name__, *_RAY, *ray_start], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
        head = cls(supervisor, temp_dir)
        output = _Output(supervisor)
        deadline = time.monotonic() + timeout_s
        while not (temp_dir / ADDRESS_FILE).exists():  # written once the head can be joined
            ended = supervisor.poll() is not None
            if ended or time.monotonic() > deadline:
                head.stop()
                output.ended.wait(5)
                why = "ended" if ended else f"did not start in {timeout_s:.0f} s"
                raise HeadStartError(f"the local Ray head (ray {' '.join(ray_start)}) {why}; it printed:\n"
                                     f"{output.said()}")
            time.sleep(0.1)
        return head

    def stop(self) -> None:
        """Ends the head and every process of its session; kills the session if that takes longer than
        :data:`STOP_TIMEOUT_S`."""
        assert self.supervisor.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.supervisor.stdin.close()  # the supervisor's signal to stop
        try:
            self.supervisor.wait(STOP_TIMEOUT_S + 5)  # the supervisor's own deadline, and then some
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.supervisor.pid, signal.SIGKILL)  # the session's group id is its leader's pid
            self.supervisor.wait()


def _needs_token(environ: Mapping[str, str]) -> bool:
    """Whether Ray would turn token authentication off for want of a token (no mode chosen, no token anywhere)."""
    if "RAY_AUTH_MODE" in environ or environ.get("RAY_AUTH_TOKEN"):
        return False
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    return not (Path(path) if path else Path.home() / ".ray" / "auth_token").exists()


def _ray_temp_root(environ: Mapping[str, str], platform: str = sys.platform) -> Path:
    """Where Ray keeps its temp directories, by Ray's own rule: ``$RAY_TMPDIR/ray``, else ``$TMPDIR/ray`` on Linux,
    else ``/tmp/ray`` (short: Ray's socket paths live under it)."""
    if environ.get("RAY_TMPDIR"):
        return Path(environ["RAY_TMPDIR"]) / "ray"
    if platform.startswith("linux") and environ.get("TMPDIR"):
        return Path(environ["TMPDIR"]) / "ray"
    return Path("/tmp/ray")


def _free_port() -> int:
    """A TCP port no one listens on now (the kernel's pick); Ray binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


class _Output:
    """Reads what the head prints until it ends (so it never blocks on a full pipe) and keeps the last lines for
    an error message; :attr:`ended` is set at its end."""

    def __init__(self, process: subprocess.Popen[str], *, keep: int = 20) -> None:
        self.ended = threading.Event()
        self._last_lines: collections.deque[str] = collections.deque(maxlen=keep)
        threading.Thread(target=self._read, args=(process,), name="ray-head-output", daemon=True).start()

    def said(self) -> str:
        return "\n".join(self._last_lines) or "(nothing)"

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._last_lines.append(line.rstrip())
        self.ended.set()


def supervise(command: list[str]) -> None:
    """The head's session leader: runs ``command`` (``ray start --block``) until its own stdin, the driver's pipe,
    closes; then stops it with SIGTERM (it stops its Ray processes) and kills its session, itself included, once it
    has ended or after :data:`STOP_TIMEOUT_S`: what ``ray start`` leaves behind goes too. Should ``ray start`` end by
    itself, the session ends with it."""
    ray_start = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def stop_when_the_driver_goes() -> None:
        sys.stdin.buffer.read()
        ray_start.send_signal(signal.SIGTERM)
        time.sleep(STOP_TIMEOUT_S)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=stop_when_the_driver_goes, daemon=True).start()
    ray_start.wait()
    sys.stdout.flush()
    os.killpg(0, signal.SIGKILL)


if __name__ == "__main__":
    supervise(sys.argv[1:])
