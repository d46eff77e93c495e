"""One Kedro run at a time per project ``data/`` folder.

Runs in one project folder share ``data/``: unversioned intermediates (``dataset_index.csv``,
patch features, the FAISS index, ...) are overwritten in place, and a versioned dataset that a
node loads is the newest version on disk. Two runs at once therefore read each other's files
and publish mixed results without any error. :class:`RunLock` makes the second run stop before
it writes anything, with a message naming the run that holds the folder.

The lock is ``fcntl.flock`` on ``data/.run.lock``. The operating system drops it when the
holding process ends, however it ends (success, exception, Ctrl-C, ``kill -9``), so a crashed
run never blocks the next one. The file also holds who took it (pid, host, start time, command,
run id) as JSON: a second run prints that, and a run that finds the record of a holder that is
gone (the lock itself is free) says so in a warning and takes over.

``flock`` is advisory and local: it protects runs on one machine (and on network file systems
that implement it). Where ``fcntl`` does not exist (Windows) runs are not locked; a warning says so.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = ".run.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the project's run lock."""


@dataclass(frozen=True)
class LockHolder:
    """Who took a lock, as written into the lock file."""

    pid: int | None
    host: str | None
    started: str | None
    command: str | None
    run_id: str | None

    @classmethod
    def from_text(cls, text: str) -> LockHolder | None:
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        return cls(
            pid=data.get("pid"),
            host=data.get("host"),
            started=data.get("started"),
            command=data.get("command"),
            run_id=data.get("run_id"),
        )

    def describe(self) -> str:
        parts = [f"pid {self.pid}" if self.pid is not None else "unknown pid"]
        if self.host:
            parts.append(f"on host {self.host}")
        if self.started:
            parts.append(f"started {self.started}")
        text = " ".join(parts)
        if self.command:
            text += f", command: {self.command}"
        if self.run_id:
            text += f", run id {self.run_id}"
        return text


def lock_path_for(project_path: str | os.PathLike) -> Path:
    """``<project>/data/.run.lock``: the file every run of that project locks."""
    return Path(project_path) / "data" / LOCK_FILE_NAME


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:  # pragma: no cover - e.g. invalid pid
        return False
    return True


class RunLock:
    """Exclusive, non-blocking lock on a project's ``data/`` folder.

    ``acquire()`` either takes the lock or raises :class:`RunLockedError` at once, naming the
    holder. ``release()`` is idempotent and also runs at interpreter exit (``atexit``), so a
    run interrupted by Ctrl-C frees the folder and clears its record. Re-acquiring a lock this
    process already holds (a previous in-process run that was interrupted) takes it over.
    """

    # path -> the RunLock of this process holding it (flock locks belong to an open file, so a
    # second open in the same process would conflict with the first)
    _held: dict[Path, RunLock] = {}

    def __init__(self, path: str | os.PathLike, *, command: str | None = None, run_id: str | None = None):
        self.path = Path(path).absolute()
        self.command = command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self.run_id = run_id
        self._handle: Any = None
        self._atexit_registered = False

    @property
    def held(self) -> bool:
        return self._handle is not None

    def _record(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": self.command,
            "run_id": self.run_id,
        }

    def acquire(self) -> RunLock:
        if fcntl is None:  # pragma: no cover - Windows
            logger.warning("Run lock not supported on this platform: concurrent runs are not prevented")
            return self
        previous = RunLock._held.get(self.path)
        if previous is not None and previous is not self:
            logger.warning(
                "This process still held the run lock %s from an earlier run (run id %s) that did "
                "not finish; taking it over",
                self.path,
                previous.run_id,
            )
            previous.release()
        if self.held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        handle = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = LockHolder.from_text(handle.read())
            handle.close()
            raise RunLockedError(self._busy_message(holder)) from None
        try:
            stale = handle.read()
            if stale.strip():
                holder = LockHolder.from_text(stale)
                gone = (
                    holder is not None
                    and isinstance(holder.pid, int)
                    and holder.host == socket.gethostname()
                    and not _pid_alive(holder.pid)
                )
                logger.warning(
                    "Taking over a stale run lock %s left by %s%s: that run ended without releasing "
                    "it (killed?), so its unversioned outputs under data/ may be incomplete",
                    self.path,
                    holder.describe() if holder else "an unknown run",
                    " (no longer running)" if gone else "",
                )
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(self._record()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.close()  # closing the file drops the flock
            raise
        self._handle = handle
        RunLock._held[self.path] = self
        if not self._atexit_registered:
            atexit.register(self.release)
            self._atexit_registered = True
        logger.debug("Took run lock %s", self.path)
        return self

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if RunLock._held.get(self.path) is self:
            del RunLock._held[self.path]
        try:
            handle.seek(0)
            handle.truncate()  # an empty record: nobody holds it, nothing stale to report
            handle.flush()
        except OSError:  # pragma: no cover - e.g. the folder was removed meanwhile
            pass
        finally:
            handle.close()  # drops the flock
        logger.debug("Released run lock %s", self.path)

    def _busy_message(self, holder: LockHolder | None) -> str:
        who = holder.describe() if holder else "a run that is just starting (no record yet)"
        return (
            f"Another Kedro run is using this project's data folder {self.path.parent} "
            f"(lock {self.path} held by {who}). Runs in one project folder share data/ "
            "(unversioned intermediates, and the newest version of every versioned input), so "
            "running both at once would mix their results. Wait for that run to finish, or run "
            "this one in a separate copy of the project folder. The lock is released "
            "automatically when that process ends, even if it crashes; nothing needs deleting."
        )

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
