"""How long things take and how long they have left: durations in words and estimates from what has finished.

A campaign's trials, a training run's epochs and steps, a grid of coefficient points all run for minutes or hours;
each says what it took and roughly what is left, from the clock passed in (tests pass a fake one). The estimate is
the plain one: what is left times the mean of what finished, divided by how many run at once. It is printed as
"about", since the next trials or epochs need not cost what the last ones did.
"""

from __future__ import annotations

import time
from typing import Callable, TextIO


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 04 s``, ``2 h 05 min``: seconds below a minute, minutes and seconds below an hour, then
    hours and minutes."""
    seconds = max(0.0, seconds)
    if seconds < 59.5:
        return f"{seconds:.0f} s" if seconds >= 9.5 else f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def estimate_left(durations: list[float], remaining: int, *, at_once: int = 1) -> float | None:
    """Seconds for ``remaining`` more units, ``at_once`` at a time, at the mean of ``durations`` (None before any
    finished).

    Example: trials that took 100 s and 140 s, 6 to go, 2 at once: 120 s x 6 / 2 = 360 s.
    """
    if not durations:
        return None
    if remaining <= 0:
        return 0.0
    return sum(durations) / len(durations) * remaining / max(1, at_once)


#: How long a campaign may go without a line before it says which trials are running (a trial takes minutes).
HEARTBEAT_S = 60.0


class CampaignProgress:
    """The durations of a campaign's trials in this run (from their hand-out to their result) and the campaign's
    elapsed time, for the line each finished trial prints, and a line saying what runs when none came for
    ``heartbeat_s`` (:meth:`heartbeat`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, heartbeat_s: float = HEARTBEAT_S) -> None:
        self._clock = clock
        self._heartbeat_s = heartbeat_s
        self._began: float | None = None
        self._last_line = clock()
        self._workers = 1
        self._started: dict[int, float] = {}
        self.durations: list[float] = []

    def start(self, *, workers: int) -> None:
        """The campaign begins now, with ``workers`` trials at once."""
        self._began = self._clock()
        self._workers = workers

    def printed(self) -> None:
        """The campaign printed a line just now."""
        self._last_line = self._clock()

    def heartbeat(self) -> str | None:
        """``running: trial 3 for 2 min 10 s, trial 4 for 40 s (campaign 5 min 02 s)`` when trials run and no line
        came for ``heartbeat_s`` (then the next one is due ``heartbeat_s`` later), else None."""
        now = self._clock()
        if not self._started or now - self._last_line < self._heartbeat_s:
            return None
        self._last_line = now
        running = ", ".join(f"trial {number} for {format_duration(now - began)}"
                            for number, began in sorted(self._started.items()))
        elapsed = 0.0 if self._began is None else now - self._began
        return f"running: {running} (campaign {format_duration(elapsed)})"

    def trial_ended(self, number: int) -> None:
        """Trial ``number`` ended without a result to time (interrupted): it no longer runs."""
        self._started.pop(number, None)

    def trial_started(self, number: int) -> None:
        self._started[number] = self._clock()

    def trial_finished(self, number: int) -> float | None:
        """Seconds trial ``number`` took (None when it was not started in this run)."""
        began = self._started.pop(number, None)
        if began is None:
            return None
        took = self._clock() - began
        self.durations.append(took)
        return took

    def summary(self, remaining: int) -> str:
        """``campaign 12 min 03 s, about 40 min left`` (the estimate once a trial finished, and only while trials
        remain)."""
        elapsed = 0.0 if self._began is None else self._clock() - self._began
        left = estimate_left(self.durations, remaining, at_once=self._workers)
        text = f"campaign {format_duration(elapsed)}"
        if left is not None and remaining > 0:
            text += f", about {format_duration(left)} left"
        return text


class TrainingProgress:
    """Where a training run is inside its epochs, for ``nas train``: on a terminal, one status line redrawn in place
    (at most every ``redraw_s``); elsewhere (a log file, a pipe), a plain line every ``every_s``. Each says the step,
    the elapsed time (from this object's creation: step timing included), images per second since
    the first step and about how long is left: the steps still to go at the pace since the first step (per-epoch
    evaluation included once an epoch has passed)."""

    def __init__(
        self,
        out: TextIO,
        *,
        epochs: int,
        batch_size: int,
        terminal: bool,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = 30.0,
        redraw_s: float = 0.5,
    ) -> None:
        self._out = out
        self._epochs, self._batch_size = epochs, batch_size
        self._terminal = terminal
        self._clock = clock
        self._interval = redraw_s if terminal else every_s
        self._began = clock()
        self._last_shown = self._began
        self._first_step: float | None = None
        self._steps_done = 0
        self._drawn = False

    def step(self, epoch: int, step: int, steps: int) -> None:
        """Step ``step`` of the ``steps`` of epoch ``epoch`` (both 1-based) is done."""
        now = self._clock()
        if self._first_step is None:
            self._first_step = now
        else:
            self._steps_done += 1  # steps since the first: the pace is counted between step ends
        if now - self._last_shown < self._interval:
            return
        self._last_shown = now
        line = self.status(epoch, step, steps, now)
        if self._terminal:
            self._out.write(f"\r{line}\033[K")
            self._drawn = True
        else:
            self._out.write(f"{line}\n")
        self._out.flush()

    def status(self, epoch: int, step: int, steps: int, now: float) -> str:
        text = f"epoch {epoch}/{self._epochs} step {step}/{steps}  {format_duration(now - self._began)}"
        if self._steps_done and self._first_step is not None and now > self._first_step:
            pace = (now - self._first_step) / self._steps_done
            text += f"  {self._batch_size / pace:,.0f} img/s"
            left = (self._epochs - epoch) * steps + steps - step
            if left > 0:
                text += f"  about {format_duration(pace * left)} left"
        return text

    def clear(self) -> None:
        """Erases the status line on a terminal, before a line that should stay (an epoch's summary)."""
        if self._drawn:
            self._out.write("\r\033[K")
            self._out.flush()
            self._drawn = False
