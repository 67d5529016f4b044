"""Reading and writing the project's files: whole-file atomic writes and JSON that the user gave us.

Every file a run or a tool writes (checkpoints, datasets, config.json, plots) goes through
`atomic_write`, so a reader (or a crash) sees the old file or the new one, never half of one. The
one exception is metrics.jsonl, which grows a line at a time (its reader skips a torn last line).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from model.errors import TinyGPTError


def make_folder(path: str | Path, what: str = "folder") -> Path:
    """Create the folder `path` (and its parents) unless it exists; a TinyGPTError naming it (as
    `what`, e.g. 'dataset folder') when it can't be created."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TinyGPTError(f"cannot create {what} {path}: {e.strerror or e}") from None
    return path


def temporary_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: beside it, hidden, named after this
    process (so that remove_stale_temporaries can tell a live writer's file from a dead one's)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], what: str = "") -> None:
    """Call write(f) on a temporary file in the same folder, fsync, then rename it over `path`: a
    crash at any moment leaves the previous file (if any) or the new one, never a torn file. `what`
    (e.g. 'checkpoint') names the file in the error message."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # e.g. disk full: the old file (if any) is untouched
        tmp.unlink(missing_ok=True)
        name = f"{what} {path}" if what else str(path)
        intact = "; the previous one is intact" if path.exists() else ""
        raise TinyGPTError(f"could not write {name}: {e.strerror or e}{intact}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """`data` as the whole content of `path`, written atomically."""
    atomic_write(path, lambda f: f.write(data))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of writes that were killed midway (their process is gone), so a
    run that is killed often doesn't fill the disk with half checkpoints."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there, not probe it
        return []
    removed = []
    for tmp in Path(folder).glob(".*.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def staged_folder(target: str | Path, carry_over: tuple[str, ...] = (), what: str = "folder") -> Iterator[Path]:
    """A new, empty folder beside `target` to write a whole folder's files into (a dataset's); when the
    block ends without an error it replaces `target` in one rename, else it is deleted and `target`
    stays as it was. A failed re-preparation so never costs the good folder it would have replaced.
    Files named in `carry_over` (e.g. a cached download) move from the old folder into the new one
    when the new one has none of its own. `what` (e.g. 'dataset folder') names it in errors."""
    target = Path(target)
    staging = temporary_path(target)
    shutil.rmtree(staging, ignore_errors=True)  # left by an earlier attempt of this same process id
    try:
        staging.mkdir(parents=True)
    except OSError as e:
        raise TinyGPTError(f"cannot create {what} {target}: {e.strerror or e}") from None
    try:
        yield staging
        replaced = temporary_path(target.with_name(target.name + ".old"))
        try:
            if target.exists():
                for name in carry_over:
                    if (target / name).is_file() and not (staging / name).exists():
                        os.replace(target / name, staging / name)
                os.replace(target, replaced)
            os.replace(staging, target)
        except OSError as e:
            raise TinyGPTError(f"could not put the new {target} in place: {e.strerror or e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(replaced, ignore_errors=True)


def read_user_file(path: str | Path, what: str = "file") -> bytes:
    """The bytes of a file the user named (`what` says which, e.g. 'prompt file'); a one-line
    TinyGPTError when it is missing, is a folder, or can't be read."""
    path = Path(path)
    if path.is_dir():
        raise TinyGPTError(f"{what} {path} is a folder, not a file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TinyGPTError(f"{what} not found: {path}") from None
    except OSError as e:
        raise TinyGPTError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_user_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of a file the user named; one-line errors as read_user_file, and for bad UTF-8."""
    try:
        return read_user_file(path, what).decode("utf-8")
    except UnicodeDecodeError as e:
        raise TinyGPTError(f"{what} {path} is not UTF-8 text (bad byte at offset {e.start})") from None


def read_jsonl(path: str | Path, what: str = "file") -> Iterator[tuple[str, Any]]:
    """Each non-blank line of a JSON Lines file the user named, parsed, with "FILE:LINE" to name it in
    errors; a line that is not UTF-8 or not JSON is refused in one line naming it."""
    for number, line in enumerate(read_user_file(path, what).split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TinyGPTError(f"{where}: not UTF-8 text (bad byte at column {e.start + 1})") from None
        if not text.strip():
            continue
        try:
            yield where, json.loads(text)
        except ValueError as e:
            raise TinyGPTError(f"{where}: not valid JSON ({e})") from None


def write_json(path: str | Path, value: Any) -> None:
    """`value` as indented JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def read_json(path: str | Path) -> Any:
    """The JSON value in a user's file (a config, a dataset's meta.json, a tokenizer); a TinyGPTError
    naming the file when it can't be read or isn't JSON."""
    try:
        return json.loads(read_user_file(path).decode("utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise TinyGPTError(f"{path} is not valid JSON: {e}") from None


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (POSIX). A zombie (ended, but not yet
    collected by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    try:  # Linux: the state follows the parenthesised command name in /proc/PID/stat
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
