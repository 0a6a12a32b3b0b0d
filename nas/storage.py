"""Opening an Optuna storage, and the driver lock that keeps one driver per study.

Any Optuna RDB URL (SQLite by default, PostgreSQL on a cluster) or ``journal:PATH`` opens here, with retries for
the race of two processes creating one database; read-only commands open storages that never create anything.
Database errors become one line that names the storage (its password masked) and says what to do.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shlex
import socket
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import quote

import optuna
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from nas.outputs import default_storage_url


class StudyError(RuntimeError):
    """The study cannot be opened or does not match this campaign; the message says why."""


OPEN_ATTEMPTS = 5
# The URL each storage of make_storage was opened from, for messages that tell the user a command to run on it
# (the driver lock's refusal): Optuna's storages do not say where they live.
_OPENED_FROM: weakref.WeakKeyDictionary[optuna.storages.BaseStorage, str] = weakref.WeakKeyDictionary()


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: any RDB URL (``sqlite:///runs/x.db``, ``postgresql://...``) or
    ``journal:PATH`` for Optuna's journal file (one host, many processes). Refuses what it cannot open.

    ``postgresql://`` without a driver means psycopg 3 (``pip install -e ".[postgres]"``), whatever SQLAlchemy's
    own default; ``postgresql+DRIVER://`` picks another.

    Database errors are retried a few times (about 3 s in all): two processes opening a new database at once
    race to create its schema, and the loser fails on a table or type the winner just made.
    """
    for attempt in range(OPEN_ATTEMPTS):
        try:
            storage = _open_storage(url)
        except Exception as error:  # SQLAlchemy and driver errors come in many types; each means "cannot open"
            if attempt + 1 == OPEN_ATTEMPTS or not isinstance(error, sqlalchemy.exc.SQLAlchemyError):
                raise StudyError(
                    f"cannot open storage {mask_url(url)}: {type(error).__name__}: {storage_problem(error)}"
                ) from None
            time.sleep(0.2 * 2**attempt)
        else:
            _OPENED_FROM[storage] = url
            return storage
    raise AssertionError("unreachable")


def check_file_location(url: str) -> None:
    """Refuses a SQLite or journal storage whose directory does not exist, for a command that may add to a
    storage but should not make one where the user mistyped a path (``nas bench --storage``): opening it would
    create the directories and an empty database there."""
    for prefix in ("sqlite:///", "journal:"):
        if url.startswith(prefix):
            directory = Path(url.removeprefix(prefix)).parent
            if not directory.is_dir():
                raise StudyError(f"no directory {directory} for storage {mask_url(url)}: create it first, or give "
                                 "the storage of an existing campaign")


def _open_storage(url: str) -> optuna.storages.BaseStorage:
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(_with_driver(url), heartbeat_interval=None)


def _with_driver(url: str) -> str:
    """``postgresql://`` as psycopg 3, the driver of the ``postgres`` extra (SQLAlchemy's default is psycopg2)."""
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


def _optuna_cli_storage(url: str) -> str:
    """What Optuna's own command (``optuna ... --storage``) takes for our storage ``url``, from any directory: a
    journal file's absolute path (Optuna takes an existing file for a journal), SQLite with an absolute path, a
    PostgreSQL URL with our driver, any other URL as it is."""
    if url.startswith("journal:"):
        return str(Path(url.removeprefix("journal:")).absolute())
    if url.startswith("sqlite:///"):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).absolute()}"
    return _with_driver(url)


def mask_url(url: str) -> str:
    """A storage URL fit to print or write: the password of an RDB URL shown as ``***`` (reports and logs get
    shared). A password holding ``/`` or ``@`` is masked whole, and so is one in a URL SQLAlchemy cannot parse."""
    try:
        masked = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an RDB URL (journal:PATH) or a malformed one: mask by shape
        masked = url
    if "@" in masked.partition("***@")[2].split("/", 1)[0] or masked == url:
        masked = _PASSWORD.sub(r"\1:***@", url)
    return masked


_PASSWORD = re.compile(r"^([A-Za-z][\w+.-]*://[^:/@]*):.*@")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def open_storage_readonly(url: str, study: str | None = None) -> optuna.storages.BaseStorage:
    """A storage to read ``study`` from that never creates anything: a missing SQLite or journal file is an error
    that says where the path points and names the study files beside it (:func:`_missing_file`), SQLite is opened
    read-only, and an RDB without Optuna's tables is refused instead of being given them."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        if not path.is_file():
            raise StudyError(_missing_file("no journal file", url, path, study))
        with storage_errors(url, "read"):
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise StudyError(_missing_file("no study database", url, path, study))
        url = f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&uri=true"
    url = _with_driver(url)
    with storage_errors(url, "read"):
        engine = sqlalchemy.create_engine(url)
        try:
            has_studies = sqlalchemy.inspect(engine).has_table("studies")
        finally:
            engine.dispose()
        if not has_studies:
            raise StudyError(f"{mask_url(url)} holds no Optuna studies")
        return optuna.storages.RDBStorage(url, heartbeat_interval=None, skip_table_creation=True)


STUDY_FILE_SUFFIXES = (".db", ".journal")
MAX_LISTED = 10  # study files or names a message lists; more are counted


def _missing_file(problem: str, url: str, path: Path, study: str | None) -> str:
    """The error for a storage file that is not there, so that a typo or the wrong directory is easy to see:
    where a relative path points, the study files in its folder (or the folder's absence), and the nearest of
    them as the option to type: ``--study NAME`` when ``url`` is the study's default, else ``--storage URL``."""
    text = f"{problem} {path}" + ("" if path.is_absolute() else f" ({path.absolute()})")
    folder = path.parent
    if not folder.is_dir():
        return f"{text}; there is no folder {folder}: run the command in the directory that holds it, or give --storage"
    files = sorted(entry.name for entry in folder.iterdir() if entry.suffix in STUDY_FILE_SUFFIXES)
    text += f"; study files in {folder}: {_listed(files)}"
    if study is not None and url == default_storage_url(study):
        databases = [Path(name).stem for name in files if name.endswith(".db")]
        close = [f"--study {name}" for name in difflib.get_close_matches(study, databases)]
    else:  # by name, whatever the kind: a journal typed where the database is (or the reverse) is found too
        urls = {name: ("sqlite:///" if name.endswith(".db") else "journal:") + str(folder / name) for name in files}
        close = [f"--storage {shlex.quote(urls[name])}" for name in difflib.get_close_matches(path.name, files)]
    return text + _did_you_mean(close)


def missing_study(url: str, study: str, names: Sequence[str]) -> str:
    """The error for a study that the storage at ``url`` does not hold: the studies it holds and the nearest of
    their names; for the study's default SQLite file, the names of the study databases beside it count too."""
    text = f"no study {study!r} in {mask_url(url)}; studies there: {_listed(names)}"
    candidates = list(names)
    if url == default_storage_url(study):
        path = Path(url.removeprefix("sqlite:///"))
        others = sorted(entry.name for entry in path.parent.iterdir() if entry.suffix == ".db" and entry != path)
        text += f"; study databases in {path.parent}: {_listed(others)}"
        candidates += [Path(name).stem for name in others]
    return text + _did_you_mean([f"--study {name}" for name in difflib.get_close_matches(study, candidates)])


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED]) if names else "none"
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _did_you_mean(options: Sequence[str]) -> str:
    return f"; did you mean {' or '.join(dict.fromkeys(options))}?" if options else ""


STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
"""What a failing database raises through Optuna: SQLAlchemy's errors, and Optuna's wrapper around them."""


@contextlib.contextmanager
def storage_errors(url: str, action: str) -> Iterator[None]:
    """Turns a database error into a one-line StudyError naming the storage (masked) and what to do."""
    try:
        yield
    except STORAGE_ERRORS as error:
        raise StudyError(f"cannot {action} storage {mask_url(url)}: {storage_problem(error)}") from None


def storage_problem(error: BaseException) -> str:
    """What a storage error means, with advice: a full disk, a read-only or damaged database, or the driver's text.

    Optuna wraps SQLAlchemy's error, which wraps the database driver's: the innermost one says what happened.
    """
    while (cause := getattr(error, "orig", None) or error.__cause__) is not None:
        error = cause
    text = _first_line(error)
    lowered = text.lower()
    if "disk is full" in lowered or "no space left" in lowered:
        return f"{text}: free some space, then run the same command to resume (finished trials are kept)"
    if "readonly" in lowered or "read-only" in lowered:
        return f"{text}: make the database writable (or copy it somewhere writable and use --storage)"
    if "malformed" in lowered or "not a database" in lowered or "file is encrypted" in lowered:
        return f"{text}: the database file is damaged; restore it from a backup"
    return text


class AttributeStudy:
    """A named study of a storage used as a key-value store of JSON values (its user attributes), beside the
    campaigns' studies: every campaign on the storage shares it (the step-time cache, :mod:`nas.step_cache`).
    Reads never create it; the first :meth:`put` does."""

    def __init__(self, storage: optuna.storages.BaseStorage, name: str) -> None:
        self.storage = storage
        self.name = name
        self._study_id: int | None = None

    def get(self, key: str) -> Any:
        """The value stored under ``key``, or None (also when the study does not exist yet)."""
        study_id = self._existing_study_id()
        if study_id is None:
            return None
        return self.storage.get_study_user_attrs(study_id).get(key)

    def put(self, key: str, value: Any) -> None:
        """Stores ``value`` (JSON data) under ``key``, creating the study if it is the first."""
        self.storage.set_study_user_attr(self._created_study_id(), key, value)

    def _existing_study_id(self) -> int | None:
        if self._study_id is None:
            try:
                self._study_id = self.storage.get_study_id_from_name(self.name)
            except KeyError:
                return None
        return self._study_id

    def _created_study_id(self) -> int:
        study_id = self._existing_study_id()
        if study_id is not None:
            return study_id
        try:
            self._study_id = self.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], self.name)
        except optuna.exceptions.DuplicatedStudyError:  # another driver created it meanwhile
            self._study_id = self.storage.get_study_id_from_name(self.name)
        return self._study_id


DRIVER_LOCK_SUFFIX = ":driver"


HEARTBEAT_FIRST_RETRY = 0.25  # seconds before the first retry of a failed heartbeat; doubles on each failure


class DriverLock:
    """One driver per study at a time, held in the study's storage so it works across hosts.

    This is the one place that defines the lock and its takeover window:

    * The lock is an empty Optuna study named ``STUDY:driver``: creating a study is atomic in every Optuna storage
      (a second creation of the name fails), so of two drivers started at once exactly one gets it. Its user
      attributes name the holder (host, pid) and carry a heartbeat (wall-clock time) refreshed every
      ``heartbeat_interval`` seconds (10 s).
    * Another driver takes the lock over when its holder is a dead process on the same host (at once), or when the
      heartbeat is older than ``stale_after`` seconds (60 s: a driver killed on another host). Hosts' clocks must
      agree to well within that window. Any other holder makes :meth:`acquire` raise a :class:`StudyError` naming it.
    * The holder's heartbeat survives short storage errors (a database locked by another client for a few
      seconds, a dropped connection): it retries with backoff. If it cannot refresh the lock for ``lost_after``
      seconds (half the takeover window, so it gives up well before anyone may take over), or finds the lock gone
      or taken, the lock is ``lost``: the holder must start no new trial, let its in-flight trials record, and exit
      with ``lost_reason``.
    """

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        *,
        heartbeat_interval: float = 10.0,
        stale_after: float = 60.0,
        lost_after: float | None = None,
    ) -> None:
        self.storage = storage
        self.name = study_name + DRIVER_LOCK_SUFFIX
        self.study_name = study_name
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.lost_after = stale_after / 2 if lost_after is None else lost_after
        if not 0 < heartbeat_interval < self.lost_after <= stale_after:
            raise ValueError(f"the driver lock needs 0 < heartbeat_interval ({heartbeat_interval:g}) < lost_after "
                             f"({self.lost_after:g}) <= stale_after ({stale_after:g})")
        self.lost_reason: str | None = None
        self._lock_id: int | None = None
        self._token = uuid.uuid4().hex  # study ids can be reused once deleted (SQLite): the token says "ours"
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._last_refresh = time.monotonic()
        self._last_error: Exception | None = None  # the storage error of the last failed refresh, if it failed

    @property
    def lost(self) -> bool:
        """Whether the lock was lost while held (see the class doc); ``lost_reason`` says why. A heartbeat stuck
        in a storage call for longer than ``lost_after`` counts as lost too, before the call returns."""
        if self.lost_reason is None and self._lock_id is not None:
            silent = time.monotonic() - self._last_refresh
            if silent > self.lost_after:
                self._lose_after_silence(silent)
        return self.lost_reason is not None

    def _lose_after_silence(self, silent: float) -> None:
        problem = "the storage does not answer" if self._last_error is None else storage_problem(self._last_error)
        self.lost_reason = (f"the driver lock of study {self.study_name!r} could not be refreshed for {silent:.1f} s "
                            f"({problem}); another driver may take it over after {self.stale_after:g} s")

    def acquire(self) -> None:
        """Takes the lock (or a stale one over); raises StudyError when a live driver holds it."""
        for _ in range(3):  # a stale lock may be taken over by someone else between our look and our move
            try:
                self._lock_id = self.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], self.name)
            except optuna.exceptions.DuplicatedStudyError:
                if not self._remove_if_stale():
                    raise StudyError(self._held_message()) from None
                continue
            holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": self._token, "heartbeat": time.time()}
            for key, value in holder.items():
                self.storage.set_study_user_attr(self._lock_id, key, value)
            self._last_refresh = time.monotonic()
            self._heartbeat = threading.Thread(target=self._beat, name="nas-driver-heartbeat", daemon=True)
            self._heartbeat.start()
            return
        raise StudyError(self._held_message())

    def release(self) -> None:
        """Gives the lock back (a no-op when not held or already lost); retried like a heartbeat, since a driver
        stopping on a storage error is when the storage is least reliable."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        lock_id, self._lock_id = self._lock_id, None
        if lock_id is None:
            return
        for delay in (0.0, 0.5, 1.0, 2.0):
            time.sleep(delay)
            try:
                if self._owns(lock_id):
                    self.storage.delete_study(lock_id)
                return
            except Exception as error:  # a storage error of any driver's type; the last one is reported
                failure = error
        raise StudyError(
            f"could not release the driver lock of study {self.study_name!r}: {storage_problem(failure)}; a driver "
            f"on this host takes it over at once, one on another host after {self.stale_after:g} s"
        )

    def __enter__(self) -> "DriverLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _beat(self) -> None:
        """Refreshes the heartbeat until stopped or lost, retrying storage errors with exponential backoff."""
        retries, delay = 0, self.heartbeat_interval
        while not self._stop.wait(delay):
            try:
                if not self._beat_once():
                    return
            except Exception as error:  # any storage error: the thread must outlive it, or the lock dies silently
                self._last_error = error
                silent = time.monotonic() - self._last_refresh
                if silent >= self.lost_after:
                    self._lose_after_silence(silent)
                    return
                delay = min(HEARTBEAT_FIRST_RETRY * 2**retries, self.heartbeat_interval, self.lost_after - silent)
                retries += 1
                continue
            self._last_refresh, self._last_error, retries, delay = time.monotonic(), None, 0, self.heartbeat_interval

    def _beat_once(self) -> bool:
        """Refreshes the heartbeat; False (and ``lost``) when the lock is no longer ours."""
        if self._lock_id is not None and self._owns(self._lock_id):
            self.storage.set_study_user_attr(self._lock_id, "heartbeat", time.time())
            return True
        self.lost_reason = (f"the driver lock of study {self.study_name!r} was taken over by another driver (this "
                            f"one's heartbeat had stopped for more than {self.stale_after:g} s)")
        return False

    def _owns(self, lock_id: int) -> bool:
        try:
            return self.storage.get_study_user_attrs(lock_id).get("token") == self._token
        except KeyError:
            return False

    def _holder(self) -> tuple[int, dict[str, Any]] | None:
        try:
            lock_id = self.storage.get_study_id_from_name(self.name)
            return lock_id, self.storage.get_study_user_attrs(lock_id)
        except KeyError:
            return None

    def _remove_if_stale(self) -> bool:
        """Deletes a stale lock; True when the lock is free to take now."""
        holder = self._holder()
        if holder is None:
            return True
        lock_id, attributes = holder
        if not _holder_is_stale(attributes, self.stale_after):
            return False
        try:
            self.storage.delete_study(lock_id)
        except KeyError:
            pass  # another driver removed it first; the next create decides who gets it
        return True

    def _held_message(self) -> str:
        holder = self._holder()
        who = "another driver"
        if holder is not None:
            attributes = holder[1]
            who = f"the driver on host {attributes.get('host', '?')} (pid {attributes.get('pid', '?')})"
        return (f"study {self.study_name!r} is being run by {who}; one driver runs a study at a time. Add workers "
                f"to that driver's Ray cluster instead, or stop it and run this command again to resume. A lock "
                f"left by a driver killed on another host expires {self.stale_after:g} s after its last heartbeat; "
                f"to remove it at once{self._delete_command()}")

    def _delete_command(self) -> str:
        """`` run: optuna delete-study ...``, the command that deletes this lock, ready to paste: the storage's
        URL (masked when it holds a password, which the user then types in) and shell quoting included."""
        command = ["optuna", "delete-study", "--study-name", self.name]
        url = _OPENED_FROM.get(self.storage)
        if url is None:  # a storage make_storage did not open: its URL is unknown here
            return f", run (with the study's storage URL): {shlex.join(command)} --storage URL"
        storage = _optuna_cli_storage(url)
        masked = mask_url(storage)
        note = "" if masked == storage else " (with the password in place of ***)"
        return f"{note}, run: {shlex.join([*command, '--storage', masked])}"


def _holder_is_stale(attributes: dict[str, Any], stale_after: float) -> bool:
    """A holder is gone when it is a dead process on this host or its heartbeat stopped ``stale_after`` ago."""
    heartbeat = attributes.get("heartbeat")
    if not isinstance(heartbeat, (int, float)):
        return False  # the creator has not written its attributes yet: it is alive
    if attributes.get("host") == socket.gethostname() and isinstance(attributes.get("pid"), int):
        try:
            os.kill(attributes["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
    return time.time() - heartbeat > stale_after
