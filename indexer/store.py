"""The index directory: DuckDB (source of truth), the FAISS file, and the writer lock.

Layout of ``<index_dir>``:
  * ``vidx.duckdb``      videos, clips, vectors (with the model that made them), runs;
  * ``clips.faiss``      FAISS index of clip vectors, id = ``clips.clip_id`` (derived);
  * ``clips.faiss.json`` model and id checksum of the FAISS file;
  * ``writer.lock``      held (flock) by the one process writing this index.

All writes of a batch happen in one DuckDB transaction. Clip ids come from a
sequence and are never reused, so a FAISS id always means the same vector.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from indexer import vectors as vec
from indexer.pathtext import from_stored, to_stored
from indexer.types import ClipEmbedding, ClipSpan, VideoFile, VideoResult, VideoStatus

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_FILE = "vidx.duckdb"
LOCK_FILE = "writer.lock"

_SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS video_ids START 1;
CREATE SEQUENCE IF NOT EXISTS clip_ids START 1;
CREATE SEQUENCE IF NOT EXISTS run_ids START 1;
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS models (
    model_id VARCHAR PRIMARY KEY, name VARCHAR, pretrained VARCHAR, dim INTEGER,
    image_size INTEGER, logit_scale DOUBLE, first_used_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS videos (
    video_id BIGINT, path VARCHAR, fingerprint VARCHAR, size_bytes BIGINT, mtime_ns BIGINT,
    status VARCHAR, error VARCHAR, notes VARCHAR,
    container VARCHAR, codec VARCHAR, duration_s DOUBLE, duration_source VARCHAR,
    start_time_s DOUBLE, avg_fps DOUBLE, base_fps DOUBLE, variable_frame_rate BOOLEAN,
    n_frames BIGINT, width INTEGER, height INTEGER, display_width INTEGER, display_height INTEGER,
    rotation_deg INTEGER, sample_aspect_ratio DOUBLE, has_audio BOOLEAN,
    model_id VARCHAR, clip_s DOUBLE, snippets INTEGER, sampling VARCHAR,
    frames_embedded INTEGER, decode_s DOUBLE, worker VARCHAR,
    run_id BIGINT, first_seen_at TIMESTAMP, indexed_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS clips (
    clip_id BIGINT, video_id BIGINT, idx INTEGER, start_s DOUBLE, end_s DOUBLE,
    snippet_times_s DOUBLE[]);
CREATE TABLE IF NOT EXISTS clip_vectors (clip_id BIGINT, model_id VARCHAR, vector FLOAT[]);
CREATE TABLE IF NOT EXISTS video_vectors (video_id BIGINT, model_id VARCHAR, vector FLOAT[]);
CREATE TABLE IF NOT EXISTS shots (
    shot_id BIGINT, video_id BIGINT, idx INTEGER, start_s DOUBLE, end_s DOUBLE,
    start_frame BIGINT, end_frame BIGINT, transition VARCHAR);
CREATE TABLE IF NOT EXISTS clip_tags (clip_id BIGINT, vocabulary VARCHAR, label VARCHAR, score DOUBLE);
CREATE TABLE IF NOT EXISTS shot_tags (shot_id BIGINT, vocabulary VARCHAR, label VARCHAR, score DOUBLE);
CREATE TABLE IF NOT EXISTS video_tags (video_id BIGINT, vocabulary VARCHAR, label VARCHAR, score DOUBLE);
CREATE SEQUENCE IF NOT EXISTS shot_ids START 1;
-- Clips of a video whose indexing has not finished (checkpoint_s): the next run resumes the
-- file after them. Added without a schema bump: an older vidx ignores these tables.
CREATE TABLE IF NOT EXISTS partial_videos (
    path VARCHAR, fingerprint VARCHAR, recipe VARCHAR, saved_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS partial_clips (
    path VARCHAR, idx INTEGER, start_s DOUBLE, end_s DOUBLE, snippet_times_s DOUBLE[], vector FLOAT[]);
CREATE TABLE IF NOT EXISTS runs (
    run_id BIGINT, kind VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR,
    host VARCHAR, pid INTEGER, args VARCHAR, stats VARCHAR);
"""

_PROBE_COLUMNS = ("container", "codec", "duration_s", "duration_source", "start_time_s", "avg_fps",
                  "base_fps", "variable_frame_rate", "n_frames", "width", "height", "display_width",
                  "display_height", "rotation_deg", "sample_aspect_ratio", "has_audio")


def _one(result: duckdb.DuckDBPyConnection) -> tuple | None:
    """First row of a result, fetching all of it (DuckDB refuses new work on a half-read result)."""
    rows = result.fetchall()
    return rows[0] if rows else None


class IndexError_(RuntimeError):
    """Base of errors about the index directory; messages name the directory and the fix."""


class IndexLocked(IndexError_):
    pass


class IndexMissing(IndexError_):
    pass


class ModelMismatch(IndexError_):
    pass


# A full or read-only disk is systemic, not a bug: one line that says so and what to do,
# instead of DuckDB's traceback. (errno, words in DuckDB's message) -> (what, fix)
_STORAGE_FAILURES = (
    (errno.ENOSPC, "No space left on device", "the disk is full",
     "free space, or point --db / VIDX_DB at a disk with room"),
    (errno.EDQUOT, "Disk quota exceeded", "the disk quota is used up",
     "free space, or point --db / VIDX_DB at a disk with room"),
    (errno.EROFS, "Read-only file system", "the file system is read-only",
     "point --db / VIDX_DB at a writable folder"),
)


def describe_storage_failure(exc: BaseException) -> str | None:
    """One line for an exception caused by a full or read-only disk (through its chain of
    causes), else None. Work committed before it is kept: commits are transactions."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        for code, words, what, fix in _STORAGE_FAILURES:
            if (isinstance(e, OSError) and e.errno == code) or words in text:
                return (f"{what} ({text}); {fix}. Everything committed before this is kept; "
                        f"run the same command again to continue")
        e = e.__cause__ or e.__context__
    return None


@dataclass(frozen=True)
class StoredVideo:
    video_id: int
    path: str
    fingerprint: str
    size_bytes: int
    mtime_ns: int
    status: str


@dataclass(frozen=True)
class IndexParams:
    """How clips were made; recorded per video so a settings change can be detected."""

    model_id: str
    clip_s: float
    snippets: int
    sampling: str

    @property
    def recipe(self) -> str:
        """Everything that decides a video's clips and vectors: a partial video saved under
        another recipe cannot be resumed."""
        return f"{self.model_id}|{self.clip_s:g}|{self.snippets}|{self.sampling}"


class FileLock:
    """An exclusive, non-blocking flock on a file that names its holder for error messages.

    The kernel drops the lock when the holder dies (even by kill -9), so a crash never
    leaves a stale lock behind.
    """

    def __init__(self, path: str, holder: str = "vidx"):
        self.path, self.holder = path, holder
        self._fh = None

    def locked_message(self, holder: str) -> str:
        return f"{self.path} is locked by {holder}"

    def acquire(self) -> None:
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise IndexLocked(self.locked_message(holder)) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{self.holder} pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class WriterLock(FileLock):
    """``writer.lock``: held by the one process writing an index."""

    def __init__(self, index_dir: str):
        super().__init__(os.path.join(index_dir, LOCK_FILE))

    def current_holder(self) -> str | None:
        """Who holds the lock now ("vidx pid N on HOST since T"), or None; never takes the lock
        (even a shared probe could make a writer starting at that instant fail)."""
        try:
            with open(self.path) as fh:
                text = fh.read().strip()
                st = os.fstat(fh.fileno())
        except OSError:
            return None
        held = _flock_held(st.st_dev, st.st_ino)
        if held is None:  # no /proc/locks: the named process on this host is alive
            held = _named_process_alive(text)
        return (text or "another process") if held else None

    def locked_message(self, holder: str) -> str:
        return (f"index {os.path.dirname(self.path)} is being written by {holder}; wait for it to "
                f"finish (or stop it), or use another index with --db")


def _flock_held(device: int, inode: int) -> bool | None:
    """Whether some process holds a flock on the file (device, inode); None without /proc/locks."""
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    want = (os.major(device), os.minor(device), inode)
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF": major:minor in hex, inode in decimal;
        # "->" marks a process waiting for the lock, not holding it.
        if "FLOCK" not in parts or "->" in parts:
            continue
        try:
            major, minor, ino = parts[parts.index("FLOCK") + 4].split(":")
            if (int(major, 16), int(minor, 16), int(ino)) == want:
                return True
        except (IndexError, ValueError):
            continue
    return False


def _named_process_alive(holder: str) -> bool:
    """For "vidx pid N on HOST ...": is N alive here (other hosts: assume so)?"""
    words = holder.split()
    try:
        pid = int(words[words.index("pid") + 1])
        host = words[words.index("on") + 1]
    except (ValueError, IndexError):
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)  # PermissionError: alive, but another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _location_rows(pairs: Sequence[tuple[int, VideoFile]], id_column: str) -> pa.Table:
    """(video id, file) pairs as Arrow columns: the id (named ``id_column``), path, size, mtime."""
    return pa.table({id_column: pa.array([int(vid) for vid, _ in pairs], pa.int64()),
                     "path": pa.array([to_stored(f.path) for _, f in pairs], pa.string()),
                     "size_bytes": pa.array([f.size_bytes for _, f in pairs], pa.int64()),
                     "mtime_ns": pa.array([f.mtime_ns for _, f in pairs], pa.int64())})


class IndexStore:
    """Read/write access to one index directory. Use as a context manager.

    ``read_only=True`` opens an existing index for queries and takes no lock.

    DuckDB lets one process open a database file for writing and then no other process
    may open it at all, not even read-only. So that an archive can be searched (and
    ``vidx status`` read) while a long ``vidx index`` runs, a writer gives the file back
    between its batches (``release_connection``, called after each committed batch) and
    reopens it on its next use of ``con``; the writer lock (``writer.lock``) stays held
    all along, so a second writer is still refused. A reader that finds the file open
    waits up to ``read_wait_s`` for the writer's batch to end; a writer that finds a
    reader waits up to ``write_wait_s`` (readers hold the file for a second or two).
    """

    def __init__(self, index_dir: str, read_only: bool = False, read_wait_s: float = 30.0,
                 write_wait_s: float = 300.0):
        self.index_dir = os.path.abspath(index_dir)
        self.read_only = read_only
        self.db_path = os.path.join(self.index_dir, DB_FILE)
        self._lock = None if read_only else WriterLock(self.index_dir)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opened = False  # between open() and close(); con reconnects after release_connection()
        self.read_wait_s = read_wait_s
        self.write_wait_s = write_wait_s
        self.reader_wait_s = 0.0  # how long this writer waited for readers to close the file

    @property
    def con(self) -> duckdb.DuckDBPyConnection | None:
        """The DuckDB connection; reopened (waiting for readers) after ``release_connection``."""
        if self._con is None and self._opened and not self.read_only:
            self._con = self._connect_writable(self.write_wait_s)
        return self._con

    def release_connection(self) -> None:
        """Close DuckDB (its WAL is checkpointed) until the next use of ``con``, so that other
        processes can read the index meanwhile. Keeps the writer lock. No-op for readers."""
        if self._con is not None and not self.read_only:
            self._con.close()
            self._con = None

    # -- lifecycle -----------------------------------------------------------------
    def open(self) -> "IndexStore":
        if self.read_only:
            if not os.path.exists(self.db_path):
                raise IndexMissing(f"no index at {self.index_dir}; build one with 'vidx index FOLDER' "
                                   f"(or point --db / VIDX_DB at an existing index)")
            self._con = self._connect_read_only()
            self._opened = True
            self._check_version()
            return self
        os.makedirs(self.index_dir, exist_ok=True)
        self._lock.acquire()
        try:
            self._con = self._connect_writable()
            self._opened = True
            self.con.execute(_SCHEMA)
            self._init_version()
            # We hold the writer lock, so a run still marked running died (kill -9, power loss).
            self.con.execute("UPDATE runs SET status = 'aborted', finished_at = now() WHERE status = 'running'")
            for name in os.listdir(self.index_dir):
                if ".tmp" in name and name.startswith((vec.INDEX_FILE, vec.META_FILE)):
                    os.remove(os.path.join(self.index_dir, name))  # half-written by a killed run
        except BaseException:
            self.close()
            raise
        return self

    def _connect_read_only(self) -> duckdb.DuckDBPyConnection:
        """Open DuckDB read-only; while a writer holds the file (one batch), wait for it."""
        deadline = time.monotonic() + self.read_wait_s
        while True:
            try:
                return duckdb.connect(self.db_path, read_only=True)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() > deadline:
                    raise IndexLocked(
                        f"index {self.index_dir} has been held by a writer ('vidx index', 'vidx moderate' "
                        f"or a notebook) for {self.read_wait_s:.0f} s; try again when it finishes") from None
                time.sleep(0.1)

    def _connect_writable(self, wait_s: float = 10.0) -> duckdb.DuckDBPyConnection:
        """Open DuckDB for writing; a reader (search, status) holds it only briefly, so wait for it."""
        t0 = time.monotonic()
        deadline = t0 + wait_s
        waited = False
        while True:
            try:
                con = duckdb.connect(self.db_path)
                self.reader_wait_s += time.monotonic() - t0 if waited else 0.0
                return con
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() > deadline:
                    holder = str(exc).split("PID")[-1].strip().split()[0] if "PID" in str(exc) else "?"
                    raise IndexLocked(
                        f"index {self.index_dir} is open in another process (pid {holder}), e.g. a "
                        f"search, 'vidx status' or a notebook; close it and run this again") from None
                if not waited:
                    log.debug("DuckDB file of %s is open in a reader; waiting for it", self.index_dir)
                    waited = True
                time.sleep(0.1)

    def close(self) -> None:
        self._opened = False
        if self._con is not None:
            self._con.close()
            self._con = None
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "IndexStore":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _init_version(self) -> None:
        row = _one(self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'"))
        if row is None:
            self.con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        else:
            self._check_version()

    def _check_version(self) -> None:
        row = _one(self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'"))
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise IndexError_(f"index {self.index_dir} has schema {version}, newer than this vidx "
                              f"understands ({SCHEMA_VERSION}); upgrade vidx")

    # -- model ---------------------------------------------------------------------
    def index_model(self) -> str | None:
        """The model whose vectors this index holds (None when it holds none)."""
        row = _one(self.con.execute("SELECT value FROM meta WHERE key = 'model_id'"))
        return row[0] if row else None

    def check_model(self, model_id: str) -> None:
        current = self.index_model()
        if current is not None and current != model_id:
            raise ModelMismatch(
                f"index {self.index_dir} holds vectors from model '{current}' but this run uses "
                f"'{model_id}'; vectors of different models cannot be mixed. Use the same "
                f"--model/--pretrained, another index (--db), or rebuild with 'vidx index --reset'.")

    def register_model(self, model_id: str, name: str, pretrained: str, dim: int, image_size: int,
                       logit_scale: float) -> None:
        self.check_model(model_id)
        with self.transaction():
            if self.index_model() is None:
                self.con.execute("INSERT INTO meta VALUES ('model_id', ?)", [model_id])
            if not _one(self.con.execute("SELECT 1 FROM models WHERE model_id = ?", [model_id])):
                self.con.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, now())",
                                 [model_id, name, pretrained, dim, image_size, logit_scale])

    def reset(self) -> None:
        """Drop every video, clip and vector (the model can then change)."""
        with self.transaction():
            for table in ("clip_tags", "shot_tags", "video_tags", "shots", "clip_vectors", "video_vectors",
                          "clips", "videos", "models", "partial_clips", "partial_videos"):
                self.con.execute(f"DELETE FROM {table}")
            self.con.execute("DELETE FROM meta WHERE key = 'model_id'")
        for name in (vec.INDEX_FILE, vec.META_FILE):
            try:
                os.remove(os.path.join(self.index_dir, name))
            except FileNotFoundError:
                pass

    # -- transactions ----------------------------------------------------------------
    class _Txn:
        def __init__(self, con: duckdb.DuckDBPyConnection):
            self.con = con

        def __enter__(self):
            self.con.execute("BEGIN TRANSACTION")

        def __exit__(self, exc_type, *rest):
            self.con.execute("ROLLBACK" if exc_type else "COMMIT")

    def transaction(self) -> "_Txn":
        return self._Txn(self.con)

    # -- videos ----------------------------------------------------------------------
    def stored_videos(self) -> list[StoredVideo]:
        rows = self.con.execute(
            "SELECT video_id, path, fingerprint, size_bytes, mtime_ns, status FROM videos").fetchall()
        return [StoredVideo(r[0], from_stored(r[1]), *r[2:]) for r in rows]

    def video_params(self) -> dict[int, IndexParams]:
        rows = self.con.execute(
            "SELECT video_id, model_id, clip_s, snippets, sampling FROM videos WHERE status = 'indexed'").fetchall()
        return {r[0]: IndexParams(r[1], r[2], r[3], r[4]) for r in rows}

    def update_location(self, updates: Sequence[tuple[int, VideoFile]]) -> None:
        """Renames, moves and touches: new path/size/mtime for unchanged content."""
        if not updates:
            return
        with self.transaction(), self._registered("_vidx_moves", _location_rows(updates, "video_id")):
            # One set-based UPDATE: a row at a time cost ~0.5 ms each (9.4 s for 20,000 touched files).
            self.con.execute("UPDATE videos SET path = m.path, size_bytes = m.size_bytes, mtime_ns = m.mtime_ns "
                             "FROM _vidx_moves m WHERE videos.video_id = m.video_id")

    def copy_videos(self, copies: Sequence[tuple[int, VideoFile]]) -> list[int]:
        """Clone the rows of each (source video, new file): video, clips, vectors, tags, shots.

        One transaction and a fixed number of set-based statements for any number of copies
        (one statement list per copy cost ~12 ms each: 4 min for 20,000 copies). Returns the new
        clip ids, ascending."""
        if not copies:
            return []
        rows = _location_rows(copies, "src_id").append_column("ord", pa.array(range(len(copies)), pa.int64()))
        cols = ", ".join(c for c in self._video_columns() if c not in ("video_id", "path", "size_bytes",
                                                                       "mtime_ns", "first_seen_at"))
        v_cols = ", ".join(f"v.{c}" for c in cols.split(", "))
        with self.transaction():
            with self._registered("_vidx_copies", rows):
                self.con.execute("CREATE TEMP TABLE video_map AS SELECT ord, src_id, nextval('video_ids') AS new_id, "
                                 "path, size_bytes, mtime_ns FROM (SELECT * FROM _vidx_copies ORDER BY ord)")
            self.con.execute(
                f"INSERT INTO videos (video_id, path, size_bytes, mtime_ns, first_seen_at, {cols}) "
                f"SELECT m.new_id, m.path, m.size_bytes, m.mtime_ns, now(), {v_cols} "
                f"FROM video_map m JOIN videos v ON v.video_id = m.src_id ORDER BY m.ord")
            self.con.execute("CREATE TEMP TABLE clip_map AS SELECT old_id, new_video, nextval('clip_ids') AS new_id "
                             "FROM (SELECT c.clip_id AS old_id, m.new_id AS new_video FROM clips c "
                             "JOIN video_map m ON c.video_id = m.src_id ORDER BY m.ord, c.idx)")
            self.con.execute("INSERT INTO clips SELECT m.new_id, m.new_video, c.idx, c.start_s, c.end_s, "
                             "c.snippet_times_s FROM clips c JOIN clip_map m ON c.clip_id = m.old_id")
            self.con.execute("INSERT INTO clip_vectors SELECT m.new_id, v.model_id, v.vector "
                             "FROM clip_vectors v JOIN clip_map m ON v.clip_id = m.old_id")
            self.con.execute("INSERT INTO video_vectors SELECT m.new_id, v.model_id, v.vector "
                             "FROM video_vectors v JOIN video_map m ON v.video_id = m.src_id")
            self.con.execute("INSERT INTO clip_tags SELECT m.new_id, t.vocabulary, t.label, t.score "
                             "FROM clip_tags t JOIN clip_map m ON t.clip_id = m.old_id")
            self.con.execute("CREATE TEMP TABLE shot_map AS SELECT old_id, new_video, nextval('shot_ids') AS new_id "
                             "FROM (SELECT s.shot_id AS old_id, m.new_id AS new_video FROM shots s "
                             "JOIN video_map m ON s.video_id = m.src_id ORDER BY m.ord, s.idx)")
            self.con.execute("INSERT INTO shots SELECT m.new_id, m.new_video, s.idx, s.start_s, s.end_s, "
                             "s.start_frame, s.end_frame, s.transition FROM shots s "
                             "JOIN shot_map m ON s.shot_id = m.old_id")
            self.con.execute("INSERT INTO shot_tags SELECT m.new_id, t.vocabulary, t.label, t.score "
                             "FROM shot_tags t JOIN shot_map m ON t.shot_id = m.old_id")
            self.con.execute("INSERT INTO video_tags SELECT m.new_id, t.vocabulary, t.label, t.score "
                             "FROM video_tags t JOIN video_map m ON t.video_id = m.src_id")
            ids = [r[0] for r in self.con.execute("SELECT new_id FROM clip_map ORDER BY new_id").fetchall()]
            for table in ("partial_clips", "partial_videos"):  # a saved part of a file now complete
                self.con.execute(f"DELETE FROM {table} WHERE path IN (SELECT path FROM video_map)")
            for table in ("video_map", "clip_map", "shot_map"):
                self.con.execute(f"DROP TABLE {table}")
        return ids

    def _video_columns(self) -> list[str]:
        return [r[0] for r in self.con.execute("DESCRIBE videos").fetchall()]

    def delete_videos(self, video_ids: Iterable[int]) -> list[int]:
        """Remove videos with their clips and vectors; returns the removed clip ids."""
        ids = list(video_ids)
        if not ids:
            return []
        with self.transaction():
            removed = self._delete_in_txn(ids)
        return removed

    def _delete_in_txn(self, video_ids: list[int]) -> list[int]:
        self.con.execute("CREATE OR REPLACE TEMP TABLE del_videos (video_id BIGINT)")
        self.con.executemany("INSERT INTO del_videos VALUES (?)", [(v,) for v in video_ids])
        clip_ids = [r[0] for r in self.con.execute(
            "SELECT clip_id FROM clips WHERE video_id IN (SELECT video_id FROM del_videos)").fetchall()]
        self.con.execute("DELETE FROM clip_vectors WHERE clip_id IN "
                         "(SELECT clip_id FROM clips WHERE video_id IN (SELECT video_id FROM del_videos))")
        self.con.execute("DELETE FROM clip_tags WHERE clip_id IN (SELECT clip_id FROM clips WHERE video_id IN "
                         "(SELECT video_id FROM del_videos))")
        self.con.execute("DELETE FROM clips WHERE video_id IN (SELECT video_id FROM del_videos)")
        self.con.execute("DELETE FROM video_vectors WHERE video_id IN (SELECT video_id FROM del_videos)")
        self.con.execute("DELETE FROM shot_tags WHERE shot_id IN (SELECT shot_id FROM shots WHERE video_id IN "
                         "(SELECT video_id FROM del_videos))")
        self.con.execute("DELETE FROM shots WHERE video_id IN (SELECT video_id FROM del_videos)")
        self.con.execute("DELETE FROM video_tags WHERE video_id IN (SELECT video_id FROM del_videos)")
        self.con.execute("DELETE FROM videos WHERE video_id IN (SELECT video_id FROM del_videos)")
        self.con.execute("DROP TABLE del_videos")
        return clip_ids

    def commit_results(self, results: Sequence[VideoResult], params: IndexParams, run_id: int,
                       after_insert=None) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Write a batch of finished files in ONE transaction.

        A file already stored under the same path is replaced (its old clips go).
        Returns (new clip ids, their vectors, removed clip ids) for the FAISS side.
        """
        new_ids: list[np.ndarray] = []
        new_vecs: list[np.ndarray] = []
        with self.transaction():
            paths = [to_stored(r.file.path) for r in results]
            old = self.con.execute("SELECT video_id FROM videos WHERE list_contains(?, path)", [paths]).fetchall()
            removed = self._delete_in_txn([r[0] for r in old]) if old else []
            video_rows, clip_rows, vector_rows, shot_rows = [], [], [], []
            for result in results:
                video_id = _one(self.con.execute("SELECT nextval('video_ids')"))[0]
                probe = result.probe
                row = {
                    "video_id": video_id, "path": to_stored(result.file.path), "fingerprint": result.fingerprint,
                    "size_bytes": result.file.size_bytes, "mtime_ns": result.file.mtime_ns,
                    "status": result.status.value, "error": result.error,
                    "notes": "; ".join(result.notes) or None,
                    **{c: (getattr(probe, c) if probe else None) for c in _PROBE_COLUMNS},
                    "model_id": params.model_id if result.status == VideoStatus.INDEXED else None,
                    "clip_s": params.clip_s, "snippets": params.snippets, "sampling": params.sampling,
                    "frames_embedded": result.frames_embedded, "decode_s": result.decode_s,
                    "worker": result.worker, "run_id": run_id,
                }
                video_rows.append(row)
                if result.clips:
                    start = self.con.execute("SELECT nextval('clip_ids') FROM range(?)",
                                             [len(result.clips)]).fetchall()
                    ids = np.array([r[0] for r in start], dtype=np.int64)
                    for cid, clip in zip(ids, result.clips):
                        clip_rows.append((int(cid), video_id, clip.span.index, clip.span.start_s,
                                          clip.span.end_s, list(clip.snippet_times_s)))
                    mat = np.stack([c.vector for c in result.clips]).astype(np.float32)
                    vector_rows.append((ids, mat))
                    new_ids.append(ids)
                    new_vecs.append(mat)
                for i, shot in enumerate(result.shots):
                    shot_rows.append((video_id, i, shot.start_s, shot.end_s, shot.start_frame,
                                      shot.end_frame, shot.transition))
                if result.video_vector is not None:
                    self.con.execute("INSERT INTO video_vectors VALUES (?, ?, ?)",
                                     [video_id, params.model_id, result.video_vector.astype(np.float32).tolist()])
            if video_rows:
                cols = ", ".join(video_rows[0].keys())
                self._insert_arrow("videos", pa.Table.from_pylist(video_rows),
                                   f"({cols}, first_seen_at, indexed_at)", f"{cols}, now(), now()")
            if shot_rows:
                self.con.executemany(
                    "INSERT INTO shots VALUES (nextval('shot_ids'), ?, ?, ?, ?, ?, ?, ?)", shot_rows)
            if clip_rows:
                clip_table = pa.table({
                    "clip_id": [r[0] for r in clip_rows], "video_id": [r[1] for r in clip_rows],
                    "idx": [r[2] for r in clip_rows], "start_s": [r[3] for r in clip_rows],
                    "end_s": [r[4] for r in clip_rows], "snippet_times_s": [r[5] for r in clip_rows]})
                self._insert_arrow("clips", clip_table)
                ids = np.concatenate([v[0] for v in vector_rows])
                mat = np.concatenate([v[1] for v in vector_rows])
                vec_table = pa.table({
                    "clip_id": ids, "model_id": [params.model_id] * len(ids),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])})
                self._insert_arrow("clip_vectors", vec_table, "", "clip_id, model_id, vector::FLOAT[]")
            # A finished video's partial clips go in the same transaction. A failed one keeps
            # them: '--retry-failed' resumes it (a timeout on a busy machine is not the file's fault).
            finished = [to_stored(r.file.path) for r in results if r.status != VideoStatus.FAILED]
            if finished:
                self._drop_partial(finished)
            if after_insert is not None:  # e.g. tagging: in the same transaction as the rows
                after_insert(self.con, [r["video_id"] for r in video_rows if r["status"] == "indexed"])
        ids = np.concatenate(new_ids) if new_ids else np.zeros(0, np.int64)
        mats = np.concatenate(new_vecs) if new_vecs else None
        return ids, mats, removed

    def _has_table(self, name: str) -> bool:
        return bool(_one(self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]))[0])

    # -- partial videos (checkpoints of videos being indexed) -----------------------------
    def _drop_partial(self, stored_paths: list[str]) -> None:
        self.con.execute("DELETE FROM partial_clips WHERE list_contains(?, path)", [stored_paths])
        self.con.execute("DELETE FROM partial_videos WHERE list_contains(?, path)", [stored_paths])

    def save_partial(self, path: str, fingerprint: str, recipe: str, clips: Sequence[ClipEmbedding]) -> None:
        """Add ``clips`` (consecutive, embedded) to the saved part of a video being indexed, in
        one transaction. Clips saved before under another fingerprint or recipe are dropped, and
        so are saved clips from the first new index on (a restarted video saves them again)."""
        if not clips:
            return
        stored = to_stored(path)
        with self.transaction():
            row = _one(self.con.execute("SELECT fingerprint, recipe FROM partial_videos WHERE path = ?", [stored]))
            if row is not None and tuple(row) != (fingerprint, recipe):
                self._drop_partial([stored])
                row = None
            first = min(c.span.index for c in clips)
            self.con.execute("DELETE FROM partial_clips WHERE path = ? AND idx >= ?", [stored, first])
            mat = np.stack([c.vector for c in clips]).astype(np.float32)
            table = pa.table({
                "path": [stored] * len(clips), "idx": [c.span.index for c in clips],
                "start_s": [c.span.start_s for c in clips], "end_s": [c.span.end_s for c in clips],
                "snippet_times_s": [list(c.snippet_times_s) for c in clips],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])})
            self._insert_arrow("partial_clips", table, "",
                               "path, idx, start_s, end_s, snippet_times_s, vector::FLOAT[]")
            if row is None:
                self.con.execute("INSERT INTO partial_videos VALUES (?, ?, ?, now())", [stored, fingerprint, recipe])
            else:
                self.con.execute("UPDATE partial_videos SET saved_at = now() WHERE path = ?", [stored])

    def load_partial(self, files: Sequence[tuple[str, str]], recipe: str) -> dict[str, tuple[ClipEmbedding, ...]]:
        """The saved clips of each (path, fingerprint) to index that a run can resume: same
        fingerprint, same recipe, clips 0..n-1 without a gap (anything after a gap is ignored)."""
        if not files or not _one(self.con.execute("SELECT count(*) FROM partial_videos"))[0]:
            return {}
        wanted = {to_stored(p): fp for p, fp in files}
        rows = self.con.execute(
            "SELECT v.path, v.fingerprint, c.idx, c.start_s, c.end_s, c.snippet_times_s, c.vector "
            "FROM partial_videos v JOIN partial_clips c USING (path) WHERE v.recipe = ? "
            "ORDER BY v.path, c.idx", [recipe]).fetchall()
        out: dict[str, list[ClipEmbedding]] = {}
        for stored, fingerprint, idx, start_s, end_s, times, vector in rows:
            if wanted.get(stored) != fingerprint:
                continue
            clips = out.setdefault(stored, [])
            if idx != len(clips):
                continue  # past a gap (or a duplicate): not resumable from here
            clips.append(ClipEmbedding(ClipSpan(int(idx), float(start_s), float(end_s)),
                                       np.asarray(vector, np.float32), tuple(float(t) for t in times)))
        return {from_stored(k): tuple(v) for k, v in out.items() if v}

    def prune_partial(self, roots: Sequence[str], present: Iterable[str]) -> int:
        """Drop the saved parts of files under ``roots`` (the folders and files a run was
        given) that are not in ``present`` (the paths it discovered there): they were deleted
        or moved. Files elsewhere (another archive, a drive not mounted now) keep theirs, as
        their stored videos do. Returns how many were dropped."""
        saved = [from_stored(p) for (p,) in self.con.execute("SELECT path FROM partial_videos").fetchall()]
        if not saved:
            return 0  # the usual case: no set of every discovered path is built

        def under_roots(path: str) -> bool:
            return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)

        present = set(present)
        gone = [to_stored(p) for p in saved if under_roots(p) and p not in present]
        if gone:
            with self.transaction():
                self._drop_partial(gone)
        return len(gone)

    def _insert_arrow(self, target: str, table: pa.Table, columns: str = "", select: str = "*") -> None:
        with self._registered("_vidx_rows", table):
            self.con.execute(f"INSERT INTO {target} {columns} SELECT {select} FROM _vidx_rows")

    @contextmanager
    def _registered(self, name: str, table: pa.Table) -> Iterator[None]:
        """``table`` readable as ``name`` in SQL for the duration of the block."""
        self.con.register(name, table)
        try:
            yield
        finally:
            self.con.unregister(name)

    # -- runs ------------------------------------------------------------------------
    def start_run(self, kind: str, args: dict) -> int:
        run_id = _one(self.con.execute("SELECT nextval('run_ids')"))[0]
        self.con.execute("INSERT INTO runs VALUES (?, ?, now(), NULL, 'running', ?, ?, ?, NULL)",
                         [run_id, kind, socket.gethostname(), os.getpid(), json.dumps(args, default=str)])
        return run_id

    def finish_run(self, run_id: int, status: str, stats: dict) -> None:
        self.con.execute("UPDATE runs SET finished_at = now(), status = ?, stats = ? WHERE run_id = ?",
                         [status, json.dumps(stats, default=str), run_id])

    # -- vectors / FAISS -------------------------------------------------------------------
    def id_checksum(self) -> vec.IdChecksum:
        n, s, sq = _one(self.con.execute(
            "SELECT count(*), coalesce(sum(clip_id::HUGEINT), 0), coalesce(sum(clip_id::HUGEINT * clip_id), 0) "
            "FROM clip_vectors"))
        return vec.IdChecksum(int(n), int(s), int(sq))

    def load_vectors(self, batch_rows: int = 200_000):
        """Yield (ids, float32 matrix) batches of every clip vector, for (re)building FAISS."""
        reader = self.con.sql("SELECT clip_id, vector FROM clip_vectors ORDER BY clip_id").to_arrow_reader(batch_rows)
        for batch in reader:
            if batch.num_rows == 0:
                continue
            ids = batch.column(0).to_numpy().astype(np.int64)
            flat = batch.column(1).values.to_numpy(zero_copy_only=False).astype(np.float32)
            yield ids, flat.reshape(batch.num_rows, -1)

    def vector_dim(self) -> int | None:
        row = _one(self.con.execute("SELECT dim FROM models WHERE model_id = ?", [self.index_model()]))
        return int(row[0]) if row else None

    def build_faiss(self, kind: str | None = None, settings=None):
        """A fresh FAISS index of every vector in DuckDB (None when there are none).

        ``kind`` "flat" or "ivf"; None chooses by size (``indexer.ann``), with the kind of
        the index file before as the starting point of the hysteresis.
        """
        from indexer import ann

        previous = ann.kind_from_meta(vec.read_meta(self.index_dir))
        index, _ = ann.build(self, kind, settings, previous)
        return index

    def load_faiss(self, rebuild_if_stale: bool = True, settings=None):
        """The FAISS index if it matches DuckDB; otherwise repaired or rebuilt from DuckDB
        (and saved if writable). Its search parameters (sidecar "ann") are attached for
        ``vectors.search_index``."""
        from indexer import ann

        model_id = self.index_model()
        if model_id is None:
            return None
        meta = vec.read_meta(self.index_dir)
        checksum = self.id_checksum()
        same_model = bool(meta) and meta.get("model_id") == model_id
        index = None
        if same_model and meta.get("checksum") == checksum.__dict__:
            index = vec.read_index(self.index_dir)
            if index is not None and index.ntotal == checksum.count:
                vec.attach_ann_info(index, meta.get("ann"))
                return index
        if not rebuild_if_stale:
            return None
        if same_model:
            stale = index if index is not None else vec.read_index(self.index_dir)
            if stale is not None:
                vec.attach_ann_info(stale, meta.get("ann"))
                index = ann.repair(self, stale)
        if index is None:
            log.info("FAISS index of %s does not match DuckDB; rebuilding it from DuckDB", self.index_dir)
            index = self.build_faiss(settings=settings)
        elif not self.read_only:
            index = ann.maybe_rebuild(self, index, settings)
        if not self.read_only and index is not None:
            self.save_faiss(index)
        return index

    def save_faiss(self, index) -> None:
        from indexer import ann

        vec.write_index(index, self.index_dir, self.index_model() or "", self.id_checksum(),
                        extra={"ann": ann.meta_for_save(index, self.index_dir)})

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict:
        counts = dict(self.con.execute("SELECT status, count(*) FROM videos GROUP BY status").fetchall())
        hours = _one(self.con.execute("SELECT coalesce(sum(duration_s), 0) / 3600 FROM videos "
                                 "WHERE status = 'indexed'"))[0]
        n_clips = _one(self.con.execute("SELECT count(*) FROM clips"))[0]
        failures = [dict(path=from_stored(p), status=s, reason=e) for p, s, e in self.con.execute(
            "SELECT path, status, error FROM videos WHERE status <> 'indexed' ORDER BY status, path").fetchall()]
        last_run = _one(self.con.execute(
            "SELECT run_id, kind, started_at, finished_at, status, stats FROM runs ORDER BY run_id DESC LIMIT 1"
        ))
        size = sum(os.path.getsize(os.path.join(self.index_dir, f)) for f in os.listdir(self.index_dir)
                   if os.path.isfile(os.path.join(self.index_dir, f)))
        meta = vec.read_meta(self.index_dir) or {}
        holder = WriterLock(self.index_dir).current_holder() if self.read_only else None
        partial = [dict(path=from_stored(p), clips=int(n)) for p, n in self.con.execute(
            "SELECT path, count(*) FROM partial_clips GROUP BY path ORDER BY path").fetchall()] \
            if self._has_table("partial_clips") else []  # an index written by an older vidx has none
        return {
            "index_dir": self.index_dir,
            "writer": holder,  # the process writing the index right now (readers only), else None
            "schema_version": SCHEMA_VERSION,
            "model_id": self.index_model(),
            "videos": {k: int(counts.get(k, 0)) for k in ("indexed", "failed", "skipped")},
            "clips": int(n_clips),
            "video_hours": round(float(hours), 3),
            "index_bytes": int(size),
            "faiss": {"type": meta.get("type"), "ntotal": meta.get("ntotal"), "ann": meta.get("ann"),
                      "in_sync": bool(meta) and meta.get("checksum") == self.id_checksum().__dict__},
            "failures": failures,
            "partial": partial,  # videos whose indexing stopped part way; the next run resumes them
            "last_run": None if last_run is None else {
                "run_id": last_run[0], "kind": last_run[1], "started_at": str(last_run[2]),
                "finished_at": str(last_run[3]) if last_run[3] else None, "status": last_run[4],
                "stats": json.loads(last_run[5]) if last_run[5] else None},
        }

    # -- vectors for the ANN index (indexer.ann) -------------------------------------------
    def scan_vectors(self, batch_rows: int = 100_000):
        """Yield (ids, float32 matrix) batches of every clip vector, in storage order (no sort)."""
        reader = self.con.sql("SELECT clip_id, vector FROM clip_vectors").to_arrow_reader(batch_rows)
        for batch in reader:
            if batch.num_rows:
                yield self._ids_and_matrix(batch.column(0), batch.column(1))

    def sample_vectors(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(ids, matrix) of a reproducible random sample of ``n`` clip vectors (all when fewer)."""
        table = self.con.sql(
            f"SELECT clip_id, vector FROM clip_vectors USING SAMPLE reservoir({int(n)} ROWS) "
            f"REPEATABLE ({int(seed)})").to_arrow_table()
        return self._ids_and_matrix(table.column(0), table.column(1))

    def fetch_vectors(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(found ids, matrix) of the stored vectors of ``ids``; a ``vector_source`` for search_index."""
        wanted = pa.table({"clip_id": pa.array(np.asarray(ids, dtype=np.int64))})
        self.con.register("_vidx_wanted", wanted)
        try:
            table = self.con.sql("SELECT clip_id, vector FROM clip_vectors WHERE clip_id IN "
                                     "(SELECT clip_id FROM _vidx_wanted)").to_arrow_table()
        finally:
            self.con.unregister("_vidx_wanted")
        return self._ids_and_matrix(table.column(0), table.column(1))

    def clip_vector_ids(self) -> np.ndarray:
        """Every clip id that has a vector (unordered)."""
        col = self.con.sql("SELECT clip_id FROM clip_vectors").to_arrow_table().column(0)
        return col.to_numpy().astype(np.int64)

    @staticmethod
    def _ids_and_matrix(id_col, vector_col) -> tuple[np.ndarray, np.ndarray]:
        """Arrow (clip_id, FLOAT[] vector) columns -> (int64 ids, float32 matrix)."""
        if isinstance(id_col, pa.ChunkedArray):
            id_col = id_col.combine_chunks()
            vector_col = vector_col.combine_chunks()
        ids = np.asarray(id_col.to_numpy(zero_copy_only=False), dtype=np.int64)
        if len(ids) == 0:
            return ids, np.zeros((0, 0), np.float32)
        flat = vector_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return ids, flat.reshape(len(ids), -1)
