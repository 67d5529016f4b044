"""Reading and writing the project's files: whole-file atomic writes and JSON that the user gave us.

Every file a run or a tool writes (checkpoints, datasets, config.json, plots) goes through
`atomic_write_bytes`, so a reader (or a crash) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from model.errors import TinyGPTError


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # e.g. disk full: the old file (if any) is untouched
        tmp.unlink(missing_ok=True)
        raise TinyGPTError(f"could not write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, value: Any) -> None:
    """`value` as indented JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def read_json(path: str | Path) -> Any:
    """The JSON value in a user's file (a config, a dataset's meta.json, a tokenizer); a TinyGPTError
    naming the file when it can't be read or isn't JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise TinyGPTError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise TinyGPTError(f"{path} is not valid JSON: {e}") from None


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (POSIX)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True
