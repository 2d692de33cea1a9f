"""Discovery of candidate files and their content fingerprints.

Discovery does not judge by extension: every regular file under the given
roots is a candidate and the probe decides whether it is a video (a GIF is, an
HTML page named ``.avi`` is not). Only files that are obviously not media
(by a short deny-list of extensions) are left out to keep the probe count low
on mixed folders. Symlinked folders are followed once: a folder already seen
(by device and inode) is never entered again, so symlink loops are safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Iterator

from indexer.pathtext import display_path, spellings
from indexer.types import VideoFile

log = logging.getLogger(__name__)

# Extensions that are never video containers; probing them is wasted work.
_NOT_MEDIA_EXTENSIONS = frozenset({
    ".txt", ".md", ".json", ".tsv", ".csv", ".xml", ".py", ".pyc", ".c", ".h", ".js", ".css",
    ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".zip", ".gz", ".tar", ".7z", ".db", ".duckdb",
    ".wal", ".faiss", ".srt", ".vtt", ".ass", ".nfo", ".jpg", ".jpeg", ".png", ".bmp", ".tif",
    ".tiff", ".webp", ".heic", ".ini", ".toml", ".yaml", ".yml", ".log", ".lock", ".part",
})


def is_candidate(name: str, include_hidden: bool) -> bool:
    if not include_hidden and name.startswith("."):
        return False
    return os.path.splitext(name)[1].lower() not in _NOT_MEDIA_EXTENSIONS


def resolve_root(path: str) -> str:
    """``path`` (a file or folder named on the command line) made absolute, spelled as on disk.

    When it does not exist as typed, the other spellings of the same name are tried (see
    ``pathtext.spellings``): the ``\\xNN`` form vidx prints for bytes that are not UTF-8,
    pasted back from its output, and the other Unicode normalization (a name written on macOS
    is often decomposed, a keyboard types it composed). Raises FileNotFoundError naming the path.
    """
    typed = os.path.abspath(os.path.expanduser(path))
    for candidate in spellings(typed):
        if os.path.lexists(candidate):
            if candidate != typed:
                log.info("%s is not on disk as typed; indexing it as %s", display_path(typed),
                         display_path(candidate))
            return candidate
    try:
        os.stat(typed)  # for the system's reason (no such file, permission denied)
    except OSError as exc:
        raise FileNotFoundError(f"{path}: {exc.strerror}; check the path") from None
    return typed  # appeared meanwhile


def discover_files(roots: Iterable[str], include_hidden: bool = False) -> Iterator[VideoFile]:
    """Yield every candidate file under ``roots`` (files or folders), each once, sorted per folder.

    Paths are absolute and normalised but symlinks in them are kept as the user
    sees them, so the stored path is the one they would type.
    """
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()

    def emit(path: str, st: os.stat_result) -> Iterator[VideoFile]:
        if path not in seen_files:
            seen_files.add(path)
            yield VideoFile(path=path, size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)

    def walk(folder: str) -> Iterator[VideoFile]:
        try:
            st = os.stat(folder)
        except OSError as exc:
            log.warning("cannot read folder %s: %s", folder, exc)
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            return  # symlink loop or the same folder reached twice
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list folder %s: %s", folder, exc)
            return
        for entry in entries:
            if not include_hidden and entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    yield from walk(entry.path)
                elif entry.is_file(follow_symlinks=True) and is_candidate(entry.name, include_hidden):
                    yield from emit(entry.path, entry.stat(follow_symlinks=True))
            except OSError as exc:  # broken symlink, permission denied
                log.warning("cannot read %s: %s", entry.path, exc)

    for root in roots:
        path = os.path.abspath(os.path.expanduser(root))
        try:
            st = os.stat(path)
        except OSError as exc:
            raise FileNotFoundError(f"{root}: {exc.strerror}; check the path") from None
        if stat.S_ISDIR(st.st_mode):
            yield from walk(path)
        elif stat.S_ISREG(st.st_mode):
            yield from emit(path, st)  # an explicitly named file is always a candidate


_CHUNK_BYTES = 256 * 1024


def fingerprint_file(path: str, size_bytes: int | None = None) -> str:
    """A content fingerprint that survives renames and is cheap on large files.

    BLAKE2b over the size and three 256 KiB samples (head, middle, tail); small
    files are hashed whole. Editing a video re-muxes it, which changes the
    header and the size, so sampling is enough to see changes in practice,
    without reading gigabytes per file on every run.
    """
    size = os.path.getsize(path) if size_bytes is None else size_bytes
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(size).encode())
    with open(path, "rb") as fh:
        if size <= 3 * _CHUNK_BYTES:
            digest.update(fh.read())
        else:
            for offset in (0, size // 2 - _CHUNK_BYTES // 2, size - _CHUNK_BYTES):
                fh.seek(offset)
                digest.update(fh.read(_CHUNK_BYTES))
    return digest.hexdigest()
