"""Safe outputs for the preprocessing tools (`tools/preprocess_data.py`, `tools/preprocess_mmdata.py`).

A run builds its dataset under temporary names next to the output (`<name>.tmp-<host>-<pid>`), and only a complete
dataset with at least one sample replaces what is there, at the very end:
- a directory dataset (image-text shards) is swapped in with one `renameat2(RENAME_EXCHANGE)` (Linux; the old one
  is then deleted), or, where the file system cannot exchange, renamed aside to `<name>.old-<host>-<pid>` first;
- a `.bin/.idx` pair: the old `.idx` is removed first, then the new `.bin` and `.idx` renamed into place, so a
  crash in between leaves a prefix without `.idx` (visibly incomplete), never an `.idx` with the wrong `.bin`.
The next run removes temporaries whose process is gone (same host, PID no longer running; another host's are left
alone: their PIDs cannot be checked from here) and puts back a `.old-` directory whose swap did not finish.
Errors a user can fix (a missing or read-only output directory, ...) are `OutputError`s, which the tools print as
one line.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket

_TMP_RE = re.compile(r"\.(tmp|old)-(?P<host>.+)-(?P<pid>\d+)$")


class OutputError(Exception):
    """An output problem the user can fix; the tools print it as one line and exit 2."""


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def tmp_suffix() -> str:
    return f".tmp-{_host()}-{os.getpid()}"


def old_suffix() -> str:
    return f".old-{_host()}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_output_dir(directory: str, option: str) -> None:
    """Raises OutputError unless `directory` exists and this process can create files in it (tried for real: a
    read-only file system, or permissions, or root on a read-only mount)."""
    directory = directory or "."
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise OutputError(f"{option}: output directory {directory} {what}")
    probe = os.path.join(directory, f".write-probe{tmp_suffix()}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{option}: cannot write to output directory {directory}: {e.strerror}") from None


def prepare_dataset_dir(out_dir: str, option: str, dataset_file) -> str:
    """The parent directory of a directory dataset's `out_dir`, created when missing and checked writable; an
    existing `out_dir` must hold only dataset files (`dataset_file`: a compiled regex of their names), because the
    swap at the end replaces the whole directory. Raises OutputError."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{option}: cannot create output directory {parent}: {e.strerror}") from None
    check_output_dir(parent, option)
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir) or os.path.islink(out_dir):
            raise OutputError(f"{option}: {out_dir} exists and is not a directory")
        foreign = sorted(n for n in os.listdir(out_dir) if not dataset_file.match(n) and ".tmp-" not in n)
        if foreign:
            raise OutputError(f"{option}: {out_dir} holds files that are not part of a dataset "
                              f"({', '.join(foreign[:3])}); use an empty or dataset directory")
    return parent


def remove_stale(directory: str, name_prefix: str) -> list[str]:
    """Removes `<name_prefix>*.tmp-<host>-<pid>` entries of this host whose process has ended, and restores a
    `<name>.old-<host>-<pid>` directory of an ended process when `<name>` is missing (its swap was interrupted).
    Returns what it removed or restored."""
    done = []
    host = _host()
    try:
        names = sorted(os.listdir(directory or "."))
    except OSError:
        return done
    for name in names:
        m = _TMP_RE.search(name)
        if not name.startswith(name_prefix) or not m or m["host"] != host or pid_alive(int(m["pid"])):
            continue
        path = os.path.join(directory, name)
        if m.group(1) == "old":
            final = path[: m.start()]
            if not os.path.exists(final):
                os.rename(path, final)
                done.append(f"restored {final}")
                continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        done.append(path)
    return done


def _renameat2_exchange(a: str, b: str) -> bool:
    """Atomically exchanges two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def replace_dir(tmp: str, final: str) -> None:
    """Puts the complete directory `tmp` at `final`, replacing what is there in one step where possible."""
    if not os.path.lexists(final):
        os.rename(tmp, final)
        return
    if _renameat2_exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # the old dataset, now under the temporary name
        return
    aside = final + old_suffix()
    os.rename(final, aside)
    os.rename(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)


def replace_pairs(pairs: list[tuple[str, str, str, str]]) -> None:
    """(tmp .bin, tmp .idx, final .bin, final .idx) per dataset: each old .idx goes first, each new .idx last."""
    for tmp_bin, tmp_idx, final_bin, final_idx in pairs:
        if os.path.exists(final_idx):
            os.remove(final_idx)
        os.replace(tmp_bin, final_bin)
        os.replace(tmp_idx, final_idx)
