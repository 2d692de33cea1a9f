"""Helpers for the end-to-end CLI tests (``tests/test_cli_*.py``); this module holds no tests.

Every test runs ``python -m vidx`` as a subprocess, exactly as a user would, then
inspects what it left behind: the JSON summary on stdout, the DuckDB file (opened
read-only, only after the writer exited) and the FAISS file.

Each subprocess gets:
  * ``PYTHONPATH`` = this checkout, so the code under test is the code next to the tests;
  * ``RAY_TMPDIR`` = a short private folder, so Ray sessions of parallel runs (other tests,
    other people on the machine) never meet, and a test can tell whether Ray started at all;
  * no ``VIDX_*`` variables from the caller's environment (only the ones a test sets).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "vidx-tiny", "--pretrained", "random"]
RUN_TIMEOUT_S = 420  # one index run; a healthy one takes 10-40 s on 2 cores


def cli_env(ray_tmp: Path | str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDX_") and k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    env.update(extra)
    return env


@pytest.fixture
def ray_tmp():
    """A short private RAY_TMPDIR (Unix socket paths under it must stay < 108 bytes)."""
    d = tempfile.mkdtemp(prefix="vxr", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def ray_started(ray_tmp: Path) -> bool:
    """True when some process started a Ray session under ``ray_tmp``."""
    return any(ray_tmp.rglob("session_*"))


def index_args(paths, db, *extra: str, tiny: bool = True) -> list[str]:
    return ["index", *[str(p) for p in paths], "--db", str(db), *(TINY if tiny else []),
            "--json", "--no-progress", *extra]


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    wall_s: float

    @property
    def json(self) -> dict:
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(f"stdout is not JSON (rc={self.rc}):\n{self.stdout[-2000:]}\n"
                                 f"--- stderr ---\n{self.stderr[-4000:]}") from None

    def describe(self) -> str:
        return f"rc={self.rc} wall={self.wall_s:.1f}s\n--- stderr ---\n{self.stderr[-4000:]}"


def run_vidx(args: list[str], env: dict[str, str], cwd: Path | str = REPO,
             timeout: float = RUN_TIMEOUT_S) -> Result:
    """Run the CLI to completion in its own process group; on timeout the whole group is killed."""
    t0 = time.monotonic()
    proc = popen_vidx(args, env, cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"vidx {' '.join(args[:1])} hung for more than {timeout} s\n{err[-4000:]}")
    return Result(proc.returncode, out, err, time.monotonic() - t0)


def popen_vidx(args: list[str], env: dict[str, str], cwd: Path | str = REPO) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vidx", *args], cwd=str(cwd), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def assert_all_gone(procs: list, timeout_s: float = 20.0) -> None:
    """Every process in ``procs`` exits within ``timeout_s`` (strays are killed, then reported)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    alive = procs
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.2)
    alive = [p for p in alive if _alive(p)]
    names = []
    for p in alive:
        try:
            names.append(f"{p.pid} {p.name()}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    assert not names, f"processes of the killed run still alive after {timeout_s} s: {names}"


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(predicate, proc: subprocess.Popen | None, timeout_s: float, what: str, poll_s: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value; fail if ``proc`` exits first or on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"vidx exited (rc={proc.returncode}) before {what}\n{err[-4000:]}")
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def faiss_meta_ntotal(db: Path) -> int:
    """Clips in the last FAISS flush, from the sidecar JSON (written atomically); -1 if none yet."""
    try:
        with open(db / "clips.faiss.json") as fh:
            return int(json.load(fh)["ntotal"])
    except (OSError, ValueError, KeyError):
        return -1


# -- reading the index after the writer exited ---------------------------------------------------

def connect(db: Path):
    import duckdb

    return duckdb.connect(str(db / "vidx.duckdb"), read_only=True)


def query(db: Path, sql: str, params=None) -> list[tuple]:
    con = connect(db)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def faiss_index(db: Path):
    import faiss

    path = db / "clips.faiss"
    assert path.exists(), f"no FAISS file in {db}: {sorted(os.listdir(db))}"
    return faiss.read_index(str(path))


def faiss_ids(db: Path) -> np.ndarray:
    import faiss

    raw = faiss_index(db)
    index = faiss.downcast_index(raw)  # a view: ``raw`` owns the index and must stay alive here
    if index.ntotal == 0:
        return np.zeros(0, np.int64)
    if hasattr(index, "id_map"):  # IndexIDMap(2): the flat index small archives use
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        del raw
        return ids
    from indexer.vectors import ids_of  # an IVF index keeps its ids in the inverted lists

    ids = ids_of(index)
    del raw
    return ids


def videos(db: Path) -> dict[str, dict]:
    """path -> row of videos (as a dict)."""
    con = connect(db)
    try:
        cur = con.execute("SELECT * FROM videos")
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()
    out: dict[str, dict] = {}
    for r in rows:
        assert r["path"] not in out, f"path stored twice in videos: {r['path']}"
        out[r["path"]] = r
    return out


def clips_by_path(db: Path) -> dict[str, list[tuple]]:
    """path -> [(clip_id, idx, start_s, end_s)] ordered by idx."""
    rows = query(db, "SELECT v.path, c.clip_id, c.idx, c.start_s, c.end_s FROM clips c "
                     "JOIN videos v USING (video_id) ORDER BY v.path, c.idx")
    out: dict[str, list[tuple]] = {}
    for path, cid, idx, s, e in rows:
        out.setdefault(path, []).append((cid, idx, s, e))
    return out


def vectors(db: Path) -> dict[int, np.ndarray]:
    """clip_id -> vector, from DuckDB."""
    return {cid: np.asarray(v, np.float32) for cid, v in query(db, "SELECT clip_id, vector FROM clip_vectors")}


def assert_index_consistent(db: Path, check_faiss: bool = True) -> None:
    """The invariants every index must hold, whatever happened to the writer.

    * a path is stored once; a clip (video_id, idx) once; clip ids are unique;
    * every clip belongs to a stored video, which is 'indexed'; every clip has exactly one vector
      and every vector a clip;
    * the FAISS file holds exactly the DuckDB clip ids, with the same vectors.
    """
    dup_paths = query(db, "SELECT path, count(*) FROM videos GROUP BY path HAVING count(*) > 1")
    assert not dup_paths, f"paths stored more than once: {dup_paths}"
    dup_vid = query(db, "SELECT video_id, count(*) FROM videos GROUP BY video_id HAVING count(*) > 1")
    assert not dup_vid, f"video ids used twice: {dup_vid}"
    dup_clips = query(db, "SELECT video_id, idx, count(*) FROM clips GROUP BY video_id, idx HAVING count(*) > 1")
    assert not dup_clips, f"clips stored more than once: {dup_clips[:10]}"
    dup_ids = query(db, "SELECT clip_id, count(*) FROM clips GROUP BY clip_id HAVING count(*) > 1")
    assert not dup_ids, f"clip ids used twice: {dup_ids[:10]}"
    orphans = query(db, "SELECT c.clip_id FROM clips c LEFT JOIN videos v USING (video_id) "
                        "WHERE v.video_id IS NULL OR v.status <> 'indexed'")
    assert not orphans, f"clips without an indexed video: {orphans[:10]}"
    clip_ids = sorted(r[0] for r in query(db, "SELECT clip_id FROM clips"))
    vec_ids = sorted(r[0] for r in query(db, "SELECT clip_id FROM clip_vectors"))
    assert vec_ids == clip_ids, "clip_vectors ids differ from clips ids"
    no_clips = query(db, "SELECT path FROM videos v WHERE status = 'indexed' AND NOT EXISTS "
                         "(SELECT 1 FROM clips c WHERE c.video_id = v.video_id)")
    assert not no_clips, f"indexed videos without clips: {no_clips}"
    if check_faiss:
        import faiss

        ids = faiss_ids(db)
        assert len(ids) == len(set(ids.tolist())), "duplicate ids in the FAISS file"
        assert sorted(ids.tolist()) == clip_ids, (
            f"FAISS ids != DuckDB clip ids: only in FAISS {sorted(set(ids.tolist()) - set(clip_ids))[:10]}, "
            f"only in DuckDB {sorted(set(clip_ids) - set(ids.tolist()))[:10]}")
        raw = faiss_index(db)
        index = faiss.downcast_index(raw)  # a view of ``raw``, which stays alive while it is used
        if clip_ids and isinstance(index, faiss.IndexIDMap2):  # exact vectors are kept by a flat index
            db_vecs = vectors(db)
            for cid in clip_ids:
                np.testing.assert_allclose(index.reconstruct(int(cid)), db_vecs[cid], atol=1e-6,
                                           err_msg=f"FAISS vector of clip {cid} differs from DuckDB's")


def assert_clips_tile_video(path: str, clips: list[tuple], duration_s: float, notes: str | None,
                            end_may_exceed_s: float = 0.0) -> None:
    """Clips of a video are idx 0..n-1 and cover [0, duration) without gap or overlap.

    ``end_may_exceed_s`` tolerates a last clip ending that much after ``duration_s``.
    """
    assert clips, f"{path}: no clips"
    assert [c[1] for c in clips] == list(range(len(clips))), f"{path}: clip idx not 0..n-1: {clips}"
    assert clips[0][2] == pytest.approx(0.0, abs=1e-6), f"{path}: first clip starts at {clips[0][2]}"
    for a, b in zip(clips, clips[1:]):
        assert b[2] == pytest.approx(a[3], abs=1e-6), f"{path}: gap or overlap between clips {a} and {b}"
    for c in clips:
        assert c[3] > c[2], f"{path}: empty clip {c}"
    if notes and "not indexed" in notes:  # a damaged tail is documented as dropped
        assert clips[-1][3] <= duration_s + 1e-6, f"{path}: clips run past the duration {duration_s}"
    else:
        assert duration_s - 1e-5 <= clips[-1][3] <= duration_s + end_may_exceed_s + 1e-5, (
            f"{path}: clips end at {clips[-1][3]}, video lasts {duration_s}")
