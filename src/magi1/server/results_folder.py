"""One server per results folder (an OS file lock held for the server's lifetime), and the folder's disk use.

Two servers on one folder would each take the other's jobs as interrupted ones, delete their chunks and run
them again. The lock is an flock (POSIX) / msvcrt lock (Windows) on `<results_dir>/.magi1-serve.lock`: the OS
drops it when the holder dies, however it dies, so a stale lock never blocks a restart. The file holds the
holder's PID, so the refusal can name it.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from magi1.errors import MagiError

LOCK_FILE = ".magi1-serve.lock"

_held: dict[Path, "ResultsFolderLock"] = {}
_held_guard = threading.Lock()


class ResultsFolderBusy(MagiError):
    """Another process serves this results folder."""


class ResultsFolderLock:
    def __init__(self, folder: Path, fd: int):
        self.folder, self._fd = folder, fd

    def release(self) -> None:
        with _held_guard:
            if _held.get(self.folder) is self:
                del _held[self.folder]
        if self._fd is not None:
            try:
                _unlock(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None


def hold_results_folder(folder: Path) -> ResultsFolderLock:
    """Lock `folder` (created if needed) for this process; the same lock again if this process holds it."""
    folder = Path(folder).absolute()
    with _held_guard:
        if folder in _held:
            return _held[folder]
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "another process"
            raise ResultsFolderBusy(f"the results folder {folder} is already used by another magi1 serve ({who}); "
                                    f"stop that server or give this one another --results_dir") from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        lock = _held[folder] = ResultsFolderLock(folder, fd)
        return lock


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() else None


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------- disk use
def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` (0 if it is gone)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def free_disk_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free
