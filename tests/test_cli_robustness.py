"""A writer that dies, is interrupted, or meets another process: the index stays whole.

All tests share one set of 25 generated videos (320x180, 3-6 s) and one clean reference run
over a copy of them (module fixtures). They index with ``--embed-workers 1 --clip-s 1`` and
commit every 0.5 s (``VIDX_COMMIT_EVERY_S``), so a run makes several commits a test can land
between. Progress is observed from outside through the FAISS sidecar (``clips.faiss.json``,
written atomically after each commit when ``VIDX_FAISS_FLUSH_S=0``) or through ``vidx status``,
which can read the index between the writer's batches.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_varied_videos
from test_cli_support import (Result, assert_all_gone, assert_index_consistent, cli_env, clips_by_path, connect,
                              descendants, faiss_meta_ntotal, index_args, kill_group, popen_vidx, query,
                              ray_tmp, run_vidx, vectors, videos, wait_for, TINY)  # noqa: F401

N_VIDEOS = 25
ARGS = ("--embed-workers", "1", "--clip-s", "1")
SOURCES = ("testsrc2", "testsrc", "smptebars", "mandelbrot", "rgbtestsrc", "cellauto", "life")


def _env(ray_dir, **extra):
    return cli_env(ray_dir, VIDX_COMMIT_EVERY_S="0.5", **extra)


@pytest.fixture(scope="module")
def corpus25(tmp_path_factory) -> Path:
    return make_varied_videos(tmp_path_factory.mktemp("corpus25"), N_VIDEOS, SOURCES, "320x180", 3, "v")


@pytest.fixture(scope="module")
def module_ray_tmp():
    d = tempfile.mkdtemp(prefix="vxr", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _copy(corpus: Path, dest: Path) -> Path:
    shutil.copytree(corpus, dest)
    return dest


def _per_video(db: Path) -> dict[str, dict]:
    """basename -> {"clips": [(idx, start, end)], "vectors": array (n_clips, dim)}."""
    vecs = vectors(db)
    out = {}
    for path, clips in clips_by_path(db).items():
        out[os.path.basename(path)] = {"clips": [c[1:] for c in clips],
                                       "vectors": np.stack([vecs[c[0]] for c in clips])}
    return out


def _ray_workers(pid: int, title: str = "ray::") -> list:
    """The Ray worker processes (decode tasks, the model actor) under the driver ``pid`` whose
    process title starts with ``title``; the GCS and raylet are left out, so pausing these does
    not upset Ray's own health checks."""
    import psutil

    workers = []
    for proc in descendants(pid):
        try:
            if " ".join(proc.cmdline()[:1]).startswith(title):
                workers.append(proc)
        except psutil.Error:
            pass
    return workers


class SlowDecoders:
    """Lets the decode workers of a run work a fifth of the time (SIGSTOP/SIGCONT cycles).

    A run commits progressively only while decoding is its bottleneck: the model embeds
    whatever is decoded in full calls, and the decoders run ahead while the model loads. On
    this corpus (small, fast-decoding files) decoding would finish during the model's load and
    the whole run would commit in one or two batches. Slowed down like this, about half of the
    files are left to decode once the model is up, so the run makes several commits that a
    test can land between, on a slow machine or a fast one.
    """

    def __init__(self, proc, run_s: float = 0.04, stop_s: float = 0.16) -> None:
        import threading

        self.proc, self.run_s, self.stop_s = proc, run_s, stop_s
        self._done = threading.Event()
        self._seen: dict = {}
        self._thread = threading.Thread(target=self._cycle, daemon=True)
        self._thread.start()

    def _signal(self, procs, sig) -> None:
        import psutil

        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass

    def _cycle(self) -> None:
        while not self._done.is_set() and self.proc.poll() is None:
            running = _ray_workers(self.proc.pid, "ray::_decode_stream")
            self._seen.update((p.pid, p) for p in running)
            self._done.wait(self.run_s)
            self._signal(running, signal.SIGSTOP)
            self._done.wait(self.stop_s)
            self._signal(running, signal.SIGCONT)

    def stop(self) -> None:
        """Back to full speed (every worker ever paused is continued)."""
        self._done.set()
        self._thread.join(timeout=10)
        self._signal(self._seen.values(), signal.SIGCONT)


def _resume(paused: list) -> None:
    import psutil

    for proc in paused:
        try:
            proc.send_signal(signal.SIGCONT)
        except psutil.Error:
            pass
    paused.clear()


def _indexed_so_far(db: Path, env: dict) -> int:
    status = run_vidx(["status", "--db", str(db), "--json"], env, timeout=120)
    return status.json["videos"]["indexed"] if status.rc == 0 else 0


def _pause_until_settled(first, db: Path, env: dict, paused: list) -> Result | None:
    """SIGSTOP every Ray worker of ``first`` (again for workers Ray starts meanwhile) until two
    'vidx status' reads 1 s apart agree on the number of indexed videos: the driver has committed
    all the work its workers finished. Returns that status, or None when the run ended."""
    last = None
    while first.poll() is None:
        for proc in _ray_workers(first.pid):
            if proc not in paused:
                proc.send_signal(signal.SIGSTOP)
                paused.append(proc)
        status = run_vidx(["status", "--db", str(db), "--json"], env, timeout=120)
        assert status.rc == 0, status.describe()
        if last is not None and status.json["videos"]["indexed"] == last.json["videos"]["indexed"]:
            return status
        last = status
        time.sleep(1.0)
    return None


@pytest.fixture(scope="module")
def reference(corpus25, tmp_path_factory, module_ray_tmp):
    """A clean run over the 25 videos; while it runs, a second writer, 'vidx status' and, once a
    batch is committed, 'vidx search' try the index.

    The mid-run readers run while the run's Ray workers are paused (SIGSTOP), so "during the run"
    does not depend on how fast this machine is: the driver is alive, holds writer.lock, and has
    given DuckDB back between batches, exactly as during a long decode."""

    root = tmp_path_factory.mktemp("reference")
    folder = _copy(corpus25, root / "videos")
    db = root / "index"
    env = _env(module_ray_tmp)
    t0 = time.monotonic()
    first = popen_vidx(index_args([folder], db, *ARGS), env)
    slow = SlowDecoders(first)
    paused: list = []
    try:
        # The writer holds writer.lock (naming itself).
        wait_for(lambda: (db / "writer.lock").exists() and f"vidx pid {first.pid}" in
                 (db / "writer.lock").read_text(), first, 120, "the first writer to hold the index")
        second = run_vidx(index_args([folder], db, *ARGS), env, timeout=120)
        reader = run_vidx(["status", "--db", str(db), "--json"], env, timeout=120)
        first_running_after = first.poll() is None
        # Once a batch is committed, pause the workers, let the driver commit what they had
        # already finished, and read.
        wait_for(lambda: _indexed_so_far(db, env) >= 1, first, 180, "a first committed video")
        searcher, status_after = None, None
        status_mid = _pause_until_settled(first, db, env, paused)
        if status_mid is not None:
            searcher = run_vidx(["search", "a test pattern", "--db", str(db), "--json", "-k", "3", *TINY],
                                env, timeout=120)
            status_after = run_vidx(["status", "--db", str(db), "--json"], env, timeout=120)
        mid_run = {"running_after_readers": first.poll() is None}
    finally:
        slow.stop()
        _resume(paused)
    try:
        out, err = first.communicate(timeout=420)
    finally:
        kill_group(first)
    res = Result(first.returncode, out, err, time.monotonic() - t0)
    assert res.rc == 0, res.describe()
    assert res.json["indexed"] == N_VIDEOS, res.json
    return {"db": db, "folder": folder, "result": res, "per_video": _per_video(db), "second": second,
            "reader": reader, "first_pid": first.pid, "first_running_after": first_running_after,
            "status_mid": status_mid, "status_after": status_after, "searcher": searcher, "mid_run": mid_run}


def _assert_matches_reference(db: Path, reference: dict, names: list[str] | None = None) -> None:
    """Committed videos hold exactly the clips and (up to float noise) the vectors of a clean run."""
    ref = reference["per_video"]
    got = _per_video(db)
    for name in (names if names is not None else sorted(got)):
        assert name in got, f"{name} has no clips"
        assert got[name]["clips"] == ref[name]["clips"], f"{name}: clips differ from a clean run"
        np.testing.assert_allclose(got[name]["vectors"], ref[name]["vectors"], atol=1e-4,
                                   err_msg=f"{name}: vectors differ from a clean run")


def _assert_complete(db: Path, folder: Path, reference: dict) -> None:
    rows = videos(db)
    assert sorted(rows) == sorted(str(p) for p in folder.iterdir()), "videos rows != files"
    assert {r["status"] for r in rows.values()} == {"indexed"}, \
        {p: (r["status"], r["error"]) for p, r in rows.items() if r["status"] != "indexed"}
    assert_index_consistent(db)
    _assert_matches_reference(db, reference, sorted(reference["per_video"]))


# -- lock ------------------------------------------------------------------------------------------

def test_second_writer_is_refused_while_first_runs(reference):
    second, reader = reference["second"], reference["reader"]
    assert reference["first_running_after"], "the first run ended before the lock could be tested"
    assert second.rc == 1, second.describe()
    assert second.wall_s < 15, f"the refused writer took {second.wall_s:.1f} s"
    assert "being written" in second.stderr and f"pid {reference['first_pid']}" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert second.stdout.strip() == ""
    # a reader is not refused: the writer gives DuckDB back between its batches
    assert reader.rc == 0, reader.describe()
    assert reader.json["last_run"]["kind"] == "index", reader.json
    # ... and the first run was not disturbed: complete, one run row, consistent
    db = reference["db"]
    _assert_complete(db, reference["folder"], reference)
    assert query(db, "SELECT status FROM runs") == [("ok",)], "the refused writer left a run row"


def test_search_and_status_work_while_indexing(reference):
    status_mid, searcher = reference["status_mid"], reference["searcher"]
    assert status_mid is not None, "no 'vidx status' saw a committed video while the run went on"
    # the readers really ran mid-run: workers were paused, the writer was still alive afterwards
    # and no video was committed while they read
    assert reference["mid_run"]["running_after_readers"], reference["mid_run"]
    assert status_mid.rc == 0, status_mid.describe()
    assert reference["status_after"].json["videos"]["indexed"] == status_mid.json["videos"]["indexed"]
    assert status_mid.json["last_run"]["status"] == "running", status_mid.json["last_run"]
    assert f"vidx pid {reference['first_pid']}" in status_mid.json["writer"], status_mid.json
    assert 1 <= status_mid.json["videos"]["indexed"] <= N_VIDEOS
    assert searcher is not None and searcher.rc == 0, searcher.describe() if searcher else "no search"
    hits = searcher.json
    assert 1 <= len(hits) <= 3, hits
    folder = str(reference["folder"])
    assert all(h["path"].startswith(folder + os.sep) and h["end_s"] > h["start_s"] for h in hits), hits
    assert "Traceback" not in searcher.stderr


def test_writer_refused_cleanly_while_a_reader_has_the_index_open(tmp_path, ray_tmp):
    empty = tmp_path / "nothing"
    empty.mkdir()
    db = tmp_path / "index"
    env = cli_env(ray_tmp)
    created = run_vidx(index_args([empty], db), env)  # an empty index; no Ray, no model needed
    assert created.rc == 0, created.describe()
    con = connect(db)  # what 'vidx status' and the Searcher hold while they read
    try:
        res = run_vidx(index_args([empty], db), env, timeout=120)
    finally:
        con.close()
    assert res.rc == 1, res.describe()
    assert "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("vidx: error:") and str(db) in res.stderr, res.stderr


# -- kill -9 ---------------------------------------------------------------------------------------

def _kill_after_commit(proc, db: Path, more_than: int, rng: random.Random) -> tuple[float, list]:
    """Wait for a FAISS flush holding more than ``more_than`` clips, wait a random moment, SIGKILL the group
    (its decoders slowed, see SlowDecoders)."""
    slow = SlowDecoders(proc)
    try:
        wait_for(lambda: faiss_meta_ntotal(db) > more_than, proc, 300, f"a commit beyond {more_than} clips")
        delay = rng.uniform(0.0, 0.4)
        time.sleep(delay)
        procs = descendants(proc.pid)
        kill_group(proc, signal.SIGKILL)
    finally:
        slow.stop()
    proc.communicate(timeout=60)
    return delay, procs


@pytest.mark.slow
def test_kill_9_twice_then_resume(corpus25, reference, tmp_path, ray_tmp):
    rng = random.Random(os.getpid())
    folder = _copy(corpus25, tmp_path / "videos")
    db = tmp_path / "index"
    env = _env(ray_tmp, VIDX_FAISS_FLUSH_S="0")
    args = index_args([folder], db, *ARGS)

    # first kill: just after the first commit
    p1 = popen_vidx(args, env)
    try:
        delay1, procs1 = _kill_after_commit(p1, db, 0, rng)
    finally:
        kill_group(p1)
    assert p1.returncode == -signal.SIGKILL
    assert_all_gone(procs1)  # raylet, gcs, workers: nothing of the killed run survives
    n1 = query(db, "SELECT count(*) FROM videos")[0][0]
    assert 0 < n1 < N_VIDEOS, f"kill 1 (+{delay1:.2f} s) did not land mid-run: {n1} videos committed"
    assert_index_consistent(db, check_faiss=False)  # FAISS may lag DuckDB after a crash
    _assert_matches_reference(db, reference)  # every committed video is whole
    # 'vidx status' tells a crashed run (marked running, its process gone) from a running one.
    told = run_vidx(["status", "--db", str(db)], env, timeout=120)
    assert told.rc == 0 and "stopped without finishing" in told.stdout, told.describe()
    told = run_vidx(["status", "--db", str(db), "--json"], env, timeout=120)
    assert told.json["writer"] is None and told.json["last_run"]["status"] == "running", told.json
    clips1 = query(db, "SELECT count(*) FROM clips")[0][0]
    stale = tmp_path / "stale-faiss"
    stale.mkdir()
    for f in ("clips.faiss", "clips.faiss.json"):
        if (db / f).exists():
            shutil.copy2(db / f, stale / f)

    # second kill: in the middle of the resumed run (half of the remaining clips committed)
    total = reference["result"].json["clips_added"]
    p2 = popen_vidx(args, env)
    try:
        delay2, procs2 = _kill_after_commit(p2, db, clips1 + (total - clips1) // 2, rng)
    finally:
        kill_group(p2)
    assert_all_gone(procs2)
    n2 = query(db, "SELECT count(*) FROM videos")[0][0]
    assert n1 < n2 <= N_VIDEOS, f"kill 2 (+{delay2:.2f} s): {n1} -> {n2} videos"
    assert_index_consistent(db, check_faiss=False)
    _assert_matches_reference(db, reference)

    # A FAISS file older than DuckDB (as after a crash between a commit and a flush) must be repaired.
    for f in ("clips.faiss", "clips.faiss.json"):
        if (stale / f).exists():
            shutil.copy2(stale / f, db / f)

    final = run_vidx(args, env)
    assert final.rc == 0, final.describe()
    s = final.json
    assert (s["indexed"], s["unchanged"], s["failed"]) == (N_VIDEOS - n2, n2, 0), s
    _assert_complete(db, folder, reference)
    assert sum(len(v["clips"]) for v in _per_video(db).values()) == total
    assert [r[0] for r in query(db, "SELECT status FROM runs ORDER BY run_id")][-1] == "ok"


# -- Ctrl-C ----------------------------------------------------------------------------------------

def _failed_rows(db: Path) -> list[tuple]:
    """(path, error) of failed videos, read between the writer's batches ([] while it writes)."""
    import duckdb

    try:
        return query(db, "SELECT path, error FROM videos WHERE status = 'failed'")
    except (duckdb.Error, OSError):
        return []


def test_a_failed_file_is_committed_while_the_model_still_loads(tmp_path, ray_tmp):
    # Results without clips need no model. The driver used to wait for the model before any
    # commit: meanwhile it read no decode stream, and a Ctrl-C during the model's load waited
    # for the load to finish. Here the model actor is stopped while it loads, so it never
    # finishes; the zero-byte file must be committed all the same.
    folder = make_varied_videos(tmp_path / "videos", 1, SOURCES, "320x180", 3, "v")
    (folder / "empty.mp4").write_bytes(b"")
    db = tmp_path / "index"
    proc = popen_vidx(index_args([folder], db, *ARGS), _env(ray_tmp))
    held: list = []
    try:
        held = wait_for(lambda: _ray_workers(proc.pid, "ray::ModelActor"), proc, 120, "the model actor")
        for actor in held:
            actor.suspend()
        rows = wait_for(lambda: _failed_rows(db), proc, 60, "the failed file committed")
        assert [(os.path.basename(p), e) for p, e in rows] == [("empty.mp4", rows[0][1])]
        assert "empty file" in rows[0][1]
        assert query(db, "SELECT count(*) FROM models")[0][0] == 0  # committed before the model loaded
        for actor in held:
            actor.resume()
        kill_group(proc, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        for actor in held:
            try:
                actor.resume()
            except Exception:  # noqa: BLE001 - already gone
                pass
        kill_group(proc)
    assert proc.returncode == 130, f"rc={proc.returncode}\n{err[-3000:]}"
    assert Result(proc.returncode, out, err, 0).json["status"] == "interrupted"
    assert [os.path.basename(p) for p, _ in _failed_rows(db)] == ["empty.mp4"]
    assert_index_consistent(db, check_faiss=False)  # no vector yet: no FAISS file was due

    again = run_vidx(index_args([folder], db, *ARGS), _env(ray_tmp))
    assert again.rc == 0, again.describe()
    s = again.json
    assert (s["indexed"], s["failed"], s["status"]) == (1, 0, "ok"), s  # the failure is remembered, not retried
    assert_index_consistent(db)


@pytest.mark.slow
def test_ctrl_c_keeps_finished_videos_and_rerun_completes(corpus25, reference, tmp_path, ray_tmp):
    folder = _copy(corpus25, tmp_path / "videos")
    db = tmp_path / "index"
    env = _env(ray_tmp, VIDX_FAISS_FLUSH_S="0")
    args = index_args([folder], db, *ARGS)
    proc = popen_vidx(args, env)
    slow = SlowDecoders(proc)
    try:
        total = reference["result"].json["clips_added"]
        wait_for(lambda: faiss_meta_ntotal(db) > total // 3, proc, 300, "a third of the clips committed")
        procs = descendants(proc.pid)
        slow.stop()  # a stopped process would hold its SIGINT until continued
        kill_group(proc, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        out, err = proc.communicate(timeout=120)
    finally:
        slow.stop()
        kill_group(proc)
    assert proc.returncode == 130, f"rc={proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert_all_gone(procs)
    summary = Result(proc.returncode, out, err, 0).json
    assert summary["status"] == "interrupted"
    n = query(db, "SELECT count(*) FROM videos")[0][0]
    assert 0 < n < N_VIDEOS, f"{n} videos committed"
    assert summary["indexed"] == n, "the summary does not count what was committed"
    assert query(db, "SELECT status FROM runs") == [("interrupted",)]
    assert_index_consistent(db)  # an orderly stop flushes FAISS too
    _assert_matches_reference(db, reference)

    again = run_vidx(args, env)
    assert again.rc == 0, again.describe()
    s = again.json
    assert (s["indexed"], s["unchanged"], s["status"]) == (N_VIDEOS - n, n, "ok"), s
    _assert_complete(db, folder, reference)
    assert [r[0] for r in query(db, "SELECT status FROM runs ORDER BY run_id")] == ["interrupted", "ok"]
