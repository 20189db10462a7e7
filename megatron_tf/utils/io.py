"""Atomic file output and dataset fingerprints.

Every long job writes to a temporary name beside the target and renames it into place only when complete, so an
interrupted run never leaves a valid-looking partial file: readers only ever see either nothing or a whole file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

TMP_MARK = ".tmp-"


def tmp_path_for(path: str) -> str:
    """A unique temporary path in the same directory as `path` (same filesystem, so rename is atomic)."""
    d, base = os.path.split(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{base}{TMP_MARK}", dir=d)
    try:
        os.fchmod(fd, file_mode())  # mkstemp creates 0600 files; give the final file the mode open() would
    finally:
        os.close(fd)
    return tmp


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode open() gives a new file: 0666 minus the umask (0644 under umask 022, 0640 under 027)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode os.makedirs gives a new directory: 0777 minus the umask."""
    return 0o777 & ~current_umask()


def honour_umask(path: str) -> None:
    """chmod a file that a library created 0600 (safetensors' save_file, mkstemp) to the umask's file mode, or a
    directory (mkdtemp: 0700) and everything under it to the umask's modes; a shared cluster's group can then
    read what a run writes, as with files written by open()."""
    if not os.path.isdir(path):
        os.chmod(path, file_mode())
        return
    fm, dm = file_mode(), dir_mode()
    os.chmod(path, dm)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), dm)
        for name in files:
            os.chmod(os.path.join(root, name), fm)


def fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(tmp: str, final: str) -> None:
    """fsync `tmp` and atomically rename it to `final`."""
    with open(tmp, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(os.path.abspath(final)))


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator:
    """Open a temporary file for writing; on success it replaces `path`, on error it is removed."""
    tmp = tmp_path_for(path)
    try:
        with open(tmp, mode) as f:
            yield f
        commit(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(out_dir: str) -> Iterator[str]:
    """Yield a fresh temporary directory beside `out_dir`; on success every file in it is fsynced and it replaces
    `out_dir` (an existing one is moved aside first and removed after the swap, so `out_dir` is never half
    written) with the modes the umask gives (files 0666 & ~umask, directories 0777 & ~umask, whatever the writer
    used); on error it is removed. Whether an existing `out_dir` may be replaced is the caller's check."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + TMP_MARK, dir=parent)
    try:
        yield tmp
        for name in os.listdir(tmp):
            path = os.path.join(tmp, name)
            if os.path.isfile(path):
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        honour_umask(tmp)  # mkdtemp makes 0700 and safetensors' save_file 0600: use the umask's modes
        fsync_dir(tmp)
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "x"))
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_copy(src: str, dst: str) -> None:
    with open(src, "rb") as fin, atomic_write(dst) as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def remove_stale_tmp(path: str) -> int:
    """Remove temporary files left beside `path` by an interrupted writer. Returns how many were removed."""
    d, base = os.path.split(os.path.abspath(path))
    n = 0
    if os.path.isdir(d):
        for name in os.listdir(d):
            if name.startswith(base + TMP_MARK):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(d, name))
                    n += 1
    return n


def read_json(path: str, error: type[Exception] = ValueError):
    """json.load of a UTF-8 file; a syntax error becomes `error("PATH: not valid JSON: ...")`."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise error(f"{path}: not valid JSON: {e}") from e
