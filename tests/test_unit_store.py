"""Unit tests for indexer.store and indexer.vectors: DuckDB rows, the writer lock, FAISS sync."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from indexer import vectors as vec
from indexer.store import (DB_FILE, IndexLocked, IndexMissing, IndexParams, IndexStore, ModelMismatch,
                           WriterLock)
from indexer.types import ClipEmbedding, ClipSpan, VideoFile, VideoProbe, VideoResult, VideoStatus

DIM = 8
MODEL = "test-model|random:0"
PARAMS = IndexParams(MODEL, 2.0, 3, "exact")


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    m = rng.normal(size=(n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def probe(duration: float = 6.0) -> VideoProbe:
    return VideoProbe(container="mov,mp4", codec="h264", duration_s=duration, duration_source="stream",
                      start_time_s=0.0, avg_fps=25.0, base_fps=25.0, variable_frame_rate=False,
                      n_frames=int(duration * 25), width=160, height=120, display_width=160,
                      display_height=120, rotation_deg=0, sample_aspect_ratio=1.0, has_audio=False,
                      video_stream_index=0)


def result(path: str, n_clips: int, rng: np.random.Generator, fingerprint: str | None = None,
           status: VideoStatus = VideoStatus.INDEXED, error: str | None = None) -> VideoResult:
    vecs = unit_rows(rng, n_clips)
    clips = tuple(ClipEmbedding(ClipSpan(i, 2.0 * i, 2.0 * (i + 1)), vecs[i],
                                (2.0 * i + 1 / 3, 2.0 * i + 1.0, 2.0 * i + 5 / 3)) for i in range(n_clips))
    video_vector = None
    if n_clips:
        m = vecs.mean(0)
        video_vector = m / np.linalg.norm(m)
    return VideoResult(
        file=VideoFile(path=path, size_bytes=1000 + n_clips, mtime_ns=123_456_789),
        fingerprint=fingerprint or f"fp-{path}", status=status, error=error,
        probe=probe(2.0 * n_clips) if status == VideoStatus.INDEXED else None,
        clips=clips, video_vector=video_vector, frames_embedded=3 * n_clips, decode_s=0.5,
        worker="host:1", notes=("note a", "note b") if n_clips == 1 else ())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(2024)


@pytest.fixture
def store(index_dir):
    s = IndexStore(str(index_dir)).open()
    s.register_model(MODEL, "test-model", "random", DIM, 32, 100.0)
    yield s
    s.close()


def clip_ids_of(store: IndexStore, path: str) -> list[int]:
    return [r[0] for r in store.con.execute(
        "SELECT c.clip_id FROM clips c JOIN videos v USING (video_id) WHERE v.path = ? ORDER BY c.idx",
        [path]).fetchall()]


def all_vectors(store: IndexStore) -> dict[int, np.ndarray]:
    return {i: m for ids, mat in store.load_vectors() for i, m in zip(ids, mat)}


def count(store: IndexStore, table: str) -> int:
    return store.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


# -- opening, model ------------------------------------------------------------------------------------

def test_open_creates_layout(index_dir):
    with IndexStore(str(index_dir)) as s:
        assert os.path.exists(index_dir / DB_FILE)
        assert os.path.exists(index_dir / "writer.lock")
        assert s.index_model() is None
        assert s.load_faiss() is None
        assert s.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [("1",)]


def test_read_only_missing_index(index_dir):
    with pytest.raises(IndexMissing, match=str(index_dir)):
        IndexStore(str(index_dir), read_only=True).open()


def test_register_and_check_model(store):
    assert store.index_model() == MODEL
    assert store.vector_dim() == DIM
    store.check_model(MODEL)  # same model: fine
    store.register_model(MODEL, "test-model", "random", DIM, 32, 100.0)  # idempotent
    assert count(store, "models") == 1
    with pytest.raises(ModelMismatch) as err:
        store.check_model("other|file:abc")
    msg = str(err.value)
    assert "cannot be mixed" in msg
    assert MODEL in msg and "other|file:abc" in msg
    with pytest.raises(ModelMismatch, match="cannot be mixed"):
        store.register_model("other|file:abc", "other", "x.pt", DIM, 32, 100.0)
    assert store.index_model() == MODEL


def test_reset_allows_another_model(store, rng):
    store.commit_results([result("/v/a.mp4", 2, rng)], PARAMS, 1)
    store.save_faiss(store.build_faiss())
    store.reset()
    assert store.index_model() is None
    assert count(store, "videos") == count(store, "clips") == count(store, "clip_vectors") == 0
    assert not os.path.exists(os.path.join(store.index_dir, vec.INDEX_FILE))
    store.register_model("other", "other", "x", 4, 32, 1.0)
    assert store.index_model() == "other"


# -- commit_results ----------------------------------------------------------------------------------

def test_commit_results_rows_and_ids(store, rng):
    results = [result("/v/a.mp4", 3, rng), result("/v/b.mp4", 1, rng),
               result("/v/bad.avi", 0, rng, status=VideoStatus.FAILED, error="is an HTML page")]
    ids, mats, removed = store.commit_results(results, PARAMS, run_id=7)
    assert removed == []
    assert ids.dtype == np.int64 and len(ids) == 4
    assert mats.shape == (4, DIM) and mats.dtype == np.float32
    db_ids = clip_ids_of(store, "/v/a.mp4") + clip_ids_of(store, "/v/b.mp4")
    assert ids.tolist() == db_ids
    assert len(set(db_ids)) == 4
    np.testing.assert_allclose(mats[:3], np.stack([c.vector for c in results[0].clips]))
    stored = all_vectors(store)
    for i, m in zip(ids, mats):
        np.testing.assert_allclose(stored[int(i)], m, atol=1e-7)
    assert count(store, "videos") == 3
    assert count(store, "clips") == 4
    assert count(store, "clip_vectors") == 4
    assert count(store, "video_vectors") == 2

    row = store.con.execute(
        "SELECT status, error, model_id, clip_s, snippets, sampling, run_id, duration_s, codec, "
        "frames_embedded, worker, notes, size_bytes, mtime_ns, fingerprint FROM videos WHERE path = '/v/b.mp4'"
    ).fetchall()[0]
    assert row == ("indexed", None, MODEL, 2.0, 3, "exact", 7, 2.0, "h264", 3, "host:1", "note a; note b",
                   1001, 123_456_789, "fp-/v/b.mp4")
    bad = store.con.execute("SELECT status, error, model_id, codec FROM videos WHERE path = '/v/bad.avi'"
                            ).fetchall()[0]
    assert bad == ("failed", "is an HTML page", None, None)
    clip = store.con.execute(
        "SELECT idx, start_s, end_s, snippet_times_s FROM clips WHERE clip_id = ?", [int(ids[1])]).fetchall()[0]
    assert clip[:3] == (1, 2.0, 4.0)
    assert clip[3] == pytest.approx([2 + 1 / 3, 3.0, 2 + 5 / 3])
    vids = store.con.execute("SELECT DISTINCT model_id FROM clip_vectors").fetchall()
    assert vids == [(MODEL,)]


def test_commit_nothing(store):
    ids, mats, removed = store.commit_results([], PARAMS, 1)
    assert ids.shape == (0,) and mats is None and removed == []


def test_commit_is_one_transaction(store, rng):
    store.commit_results([result("/v/a.mp4", 2, rng)], PARAMS, 1)
    a_clips = clip_ids_of(store, "/v/a.mp4")
    before = (count(store, "videos"), count(store, "clips"), count(store, "clip_vectors"),
              count(store, "video_vectors"))
    # The second video's vectors have another dimension: the batch fails at the vector insert,
    # after the old rows of /v/a.mp4 were deleted and the new video and clip rows were inserted.
    odd = result("/v/odd.mp4", 2, np.random.default_rng(5))
    odd = VideoResult(file=odd.file, fingerprint=odd.fingerprint, status=odd.status, probe=odd.probe,
                      clips=tuple(ClipEmbedding(c.span, np.ones(DIM + 1, np.float32) / 3.0, c.snippet_times_s)
                                  for c in odd.clips))
    with pytest.raises(ValueError, match="dimension"):
        store.commit_results([result("/v/a.mp4", 3, rng, fingerprint="new"), odd], PARAMS, 2)
    after = (count(store, "videos"), count(store, "clips"), count(store, "clip_vectors"),
             count(store, "video_vectors"))
    assert after == before
    assert [(s.path, s.fingerprint) for s in store.stored_videos()] == [("/v/a.mp4", "fp-/v/a.mp4")]
    assert clip_ids_of(store, "/v/a.mp4") == a_clips
    # and the connection is usable afterwards
    ids, _, removed = store.commit_results([result("/v/a.mp4", 1, rng)], PARAMS, 3)
    assert sorted(removed) == sorted(a_clips) and len(ids) == 1


def test_replacing_a_path_removes_old_clips(store, rng):
    ids1, _, _ = store.commit_results([result("/v/a.mp4", 3, rng), result("/v/keep.mp4", 1, rng)], PARAMS, 1)
    old_a = clip_ids_of(store, "/v/a.mp4")
    ids2, _, removed = store.commit_results([result("/v/a.mp4", 2, rng, fingerprint="new")], PARAMS, 2)
    assert sorted(removed) == sorted(old_a)
    assert clip_ids_of(store, "/v/a.mp4") == ids2.tolist()
    assert set(ids2.tolist()).isdisjoint(ids1.tolist())  # ids are never reused
    assert min(ids2) > max(ids1)
    assert count(store, "videos") == 2
    assert count(store, "clips") == 3
    assert set(all_vectors(store)) == set(ids2.tolist()) | set(clip_ids_of(store, "/v/keep.mp4"))
    fps = {s.path: s.fingerprint for s in store.stored_videos()}
    assert fps == {"/v/a.mp4": "new", "/v/keep.mp4": "fp-/v/keep.mp4"}


def test_delete_videos(store, rng):
    store.commit_results([result("/v/a.mp4", 2, rng), result("/v/b.mp4", 3, rng)], PARAMS, 1)
    by_path = {s.path: s.video_id for s in store.stored_videos()}
    b_clips = clip_ids_of(store, "/v/b.mp4")
    removed = store.delete_videos([by_path["/v/b.mp4"]])
    assert sorted(removed) == sorted(b_clips)
    assert [s.path for s in store.stored_videos()] == ["/v/a.mp4"]
    assert count(store, "clips") == 2 and count(store, "clip_vectors") == 2
    assert count(store, "video_vectors") == 1
    assert store.delete_videos([]) == []
    assert store.delete_videos([999_999]) == []


def test_update_location(store, rng):
    store.commit_results([result("/v/a.mp4", 2, rng)], PARAMS, 1)
    (s,) = store.stored_videos()
    clips = clip_ids_of(store, "/v/a.mp4")
    store.update_location([(s.video_id, VideoFile("/w/renamed.mp4", 555, 42))])
    (t,) = store.stored_videos()
    assert (t.video_id, t.path, t.size_bytes, t.mtime_ns, t.fingerprint) == \
        (s.video_id, "/w/renamed.mp4", 555, 42, s.fingerprint)
    assert clip_ids_of(store, "/w/renamed.mp4") == clips


def test_copy_video_clones_vectors_with_new_ids(store, rng):
    store.commit_results([result("/v/a.mp4", 3, rng)], PARAMS, 1)
    (src,) = store.stored_videos()
    src_clips = clip_ids_of(store, "/v/a.mp4")
    new_ids = store.copy_videos([(src.video_id, VideoFile("/v/copy.mp4", 1003, 99))])
    assert len(new_ids) == 3
    assert set(new_ids).isdisjoint(src_clips)
    assert clip_ids_of(store, "/v/copy.mp4") == new_ids
    vecs = all_vectors(store)
    for old, new in zip(src_clips, new_ids):
        np.testing.assert_array_equal(vecs[old], vecs[new])
    rows = {s.path: s for s in store.stored_videos()}
    copy = rows["/v/copy.mp4"]
    assert copy.video_id != src.video_id
    assert (copy.fingerprint, copy.status, copy.size_bytes, copy.mtime_ns) == (src.fingerprint, "indexed",
                                                                               1003, 99)
    spans = store.con.execute("SELECT idx, start_s, end_s FROM clips WHERE video_id = ? ORDER BY idx",
                              [copy.video_id]).fetchall()
    assert spans == [(0, 0.0, 2.0), (1, 2.0, 4.0), (2, 4.0, 6.0)]
    assert store.video_params()[copy.video_id] == PARAMS
    assert count(store, "video_vectors") == 2
    # a second copy works too (the temp table is dropped)
    assert len(store.copy_videos([(src.video_id, VideoFile("/v/copy2.mp4", 1003, 99))])) == 3


def test_copy_videos_clones_many_in_one_call(store, rng):
    """Two sources, one of them copied twice, in one call: every copy its own video and clip ids,
    the same spans and vectors as its source, in one transaction."""
    store.commit_results([result("/v/a.mp4", 3, rng), result("/v/b.mp4", 2, rng)], PARAMS, 1)
    src = {s.path: s for s in store.stored_videos()}
    before = {p: clip_ids_of(store, p) for p in src}
    copies = [(src["/v/a.mp4"].video_id, VideoFile("/w/a1.mp4", 1003, 7)),
              (src["/v/b.mp4"].video_id, VideoFile("/w/b1.mp4", 1002, 8)),
              (src["/v/a.mp4"].video_id, VideoFile("/w/a2.mp4", 1003, 9))]
    new_ids = store.copy_videos(copies)
    assert len(new_ids) == 3 + 2 + 3 == len(set(new_ids)) and new_ids == sorted(new_ids)
    assert set(new_ids).isdisjoint(before["/v/a.mp4"] + before["/v/b.mp4"])
    vecs = all_vectors(store)
    rows = {s.path: s for s in store.stored_videos()}
    for (source, f) in copies:
        origin = next(p for p, s in src.items() if s.video_id == source)
        got = clip_ids_of(store, f.path)
        assert len(got) == len(before[origin])
        for old, new in zip(before[origin], got):
            np.testing.assert_array_equal(vecs[old], vecs[new])
        assert (rows[f.path].fingerprint, rows[f.path].size_bytes, rows[f.path].mtime_ns) == \
            (src[origin].fingerprint, f.size_bytes, f.mtime_ns)
    assert len({rows[f.path].video_id for _, f in copies}) == 3
    assert count(store, "video_vectors") == 5
    assert store.copy_videos([]) == []


def test_video_params_only_for_indexed(store, rng):
    store.commit_results([result("/v/a.mp4", 1, rng),
                          result("/v/f.mp4", 0, rng, status=VideoStatus.FAILED, error="x")], PARAMS, 1)
    params = store.video_params()
    ids = {s.path: s.video_id for s in store.stored_videos()}
    assert params == {ids["/v/a.mp4"]: PARAMS}


def test_status_summary(store, rng):
    store.commit_results([result("/v/a.mp4", 2, rng),
                          result("/v/f.mp4", 0, rng, status=VideoStatus.FAILED, error="empty file"),
                          result("/v/s.mp3", 0, rng, status=VideoStatus.SKIPPED, error="audio only")],
                         PARAMS, 1)
    st = store.status()
    assert st["videos"] == {"indexed": 1, "failed": 1, "skipped": 1}
    assert st["clips"] == 2
    assert st["model_id"] == MODEL
    assert st["video_hours"] == round(4.0 / 3600, 3)
    assert [f["path"] for f in st["failures"]] == ["/v/f.mp4", "/v/s.mp3"]
    assert st["faiss"]["in_sync"] is False


def test_runs(store):
    run = store.start_run("index", {"paths": ["/v"]})
    store.finish_run(run, "ok", {"indexed": 3})
    st = store.status()
    assert st["last_run"]["run_id"] == run
    assert st["last_run"]["status"] == "ok"
    assert st["last_run"]["stats"] == {"indexed": 3}


# -- writer lock -----------------------------------------------------------------------------------

def test_second_writer_in_same_process_is_locked(store, index_dir):
    with pytest.raises(IndexLocked) as err:
        IndexStore(str(index_dir)).open()
    msg = str(err.value)
    assert f"vidx pid {os.getpid()}" in msg
    assert str(index_dir) in msg
    assert "--db" in msg


def test_lock_released_on_close(index_dir):
    a = IndexStore(str(index_dir)).open()
    a.close()
    b = IndexStore(str(index_dir)).open()
    b.close()


def test_writer_lock_direct(tmp_path):
    first = WriterLock(str(tmp_path))
    first.acquire()
    second = WriterLock(str(tmp_path))
    with pytest.raises(IndexLocked, match=f"pid {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()  # free now
    assert f"vidx pid {os.getpid()}" in (tmp_path / "writer.lock").read_text()
    second.release()


def test_lock_held_by_other_process(store, index_dir):
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from indexer.store import IndexStore, IndexLocked\n"
            "try:\n    IndexStore(%r).open()\nexcept IndexLocked as e:\n    print('LOCKED', e)\n"
            % (os.getcwd(), str(index_dir)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("LOCKED"), out.stderr
    assert f"vidx pid {os.getpid()}" in out.stdout


def test_writer_lock_current_holder_never_takes_the_lock(tmp_path):
    lock = WriterLock(str(tmp_path))
    assert lock.current_holder() is None  # no lock file yet
    lock.acquire()
    try:
        assert f"vidx pid {os.getpid()}" in lock.current_holder()
        with pytest.raises(IndexLocked):  # the probe did not take or break the lock
            WriterLock(str(tmp_path)).acquire()
    finally:
        lock.release()
    assert lock.current_holder() is None  # the file still names the last writer, but nobody holds it


def test_named_process_alive_reads_the_lock_text():
    from indexer.store import _named_process_alive

    here = socket.gethostname()
    assert _named_process_alive(f"vidx pid {os.getpid()} on {here} since 2026-01-01 00:00:00")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not _named_process_alive(f"vidx pid {dead.pid} on {here} since 2026-01-01 00:00:00")
    assert _named_process_alive("vidx pid 1 on some-other-host since 2026-01-01 00:00:00")  # cannot tell: assume so
    assert not _named_process_alive("garbage")


def test_status_names_the_running_writer(store, index_dir, rng):
    store.commit_results([result("/v/a.mp4", 1, rng)], PARAMS, 1)
    store.release_connection()
    out = subprocess.run([sys.executable, "-c", "import sys, json; sys.path.insert(0, %r)\n"
                          "from indexer.store import IndexStore\n"
                          "with IndexStore(%r, read_only=True) as ro:\n    print(json.dumps(ro.status()['writer']))"
                          % (os.getcwd(), str(index_dir))], capture_output=True, text=True, timeout=60)
    assert f"vidx pid {os.getpid()}" in out.stdout, out.stdout + out.stderr
    store.close()
    with IndexStore(str(index_dir), read_only=True) as ro:
        assert ro.status()["writer"] is None


def test_failed_open_releases_lock(index_dir):
    os.makedirs(index_dir)
    (index_dir / DB_FILE).write_bytes(b"this is not a duckdb file" * 100)
    with pytest.raises(Exception):
        IndexStore(str(index_dir)).open()
    lock = WriterLock(str(index_dir))
    lock.acquire()  # not left held by the failed open
    lock.release()


def _reader_script(index_dir, wait_s: float, hold_s: float = 0.0) -> str:
    """A separate process (DuckDB's file lock is per process) that opens the index read-only."""
    return ("import sys, time; sys.path.insert(0, %r)\n"
            "from indexer.store import IndexStore, IndexLocked\n"
            "try:\n"
            "    with IndexStore(%r, read_only=True, read_wait_s=%r) as ro:\n"
            "        print('OPEN', sorted(s.path for s in ro.stored_videos()), flush=True)\n"
            "        time.sleep(%r)\n"
            "except IndexLocked as e:\n    print('LOCKED', e)\n" % (os.getcwd(), str(index_dir), wait_s, hold_s))


def test_readers_wait_for_a_writers_batch_and_read_between_batches(store, index_dir, rng):
    store.commit_results([result("/v/a.mp4", 1, rng)], PARAMS, 1)
    # While the writer holds DuckDB (a batch in progress), DuckDB refuses every other process;
    # a reader waits read_wait_s for the batch to end, then says so clearly.
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _reader_script(index_dir, 1.0)], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.startswith("LOCKED"), out.stdout + out.stderr
    assert "held by a writer" in out.stdout and "try again" in out.stdout
    assert time.monotonic() - t0 >= 1.0
    # Between batches the writer gives the file back (keeping writer.lock): readers get in ...
    store.release_connection()
    out = subprocess.run([sys.executable, "-c", _reader_script(index_dir, 1.0)], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.startswith("OPEN ['/v/a.mp4']"), out.stdout + out.stderr
    # ... while a second writer is still refused by the writer lock.
    with pytest.raises(IndexLocked, match="being written"):
        IndexStore(str(index_dir)).open()
    # The writer reconnects by itself on its next batch, which later readers see.
    store.commit_results([result("/v/b.mp4", 2, rng)], PARAMS, 1)
    store.release_connection()
    out = subprocess.run([sys.executable, "-c", _reader_script(index_dir, 1.0)], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.startswith("OPEN ['/v/a.mp4', '/v/b.mp4']"), out.stdout + out.stderr
    store.close()
    with IndexStore(str(index_dir), read_only=True) as ro:
        assert [s.path for s in ro.stored_videos()] == ["/v/a.mp4", "/v/b.mp4"]
        assert ro._lock is None


def test_writer_waits_for_a_reader_to_finish(store, index_dir, rng):
    store.commit_results([result("/v/a.mp4", 1, rng)], PARAMS, 1)
    store.release_connection()
    reader = subprocess.Popen([sys.executable, "-c", _reader_script(index_dir, 10.0, hold_s=2.0)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().startswith("OPEN"), "the reader could not open the index"
        t0 = time.monotonic()
        store.commit_results([result("/v/b.mp4", 2, rng)], PARAMS, 1)  # reconnects once the reader is gone
        waited = time.monotonic() - t0
    finally:
        reader.communicate(timeout=60)
    assert 0.5 < waited < 30, waited
    assert 0.5 < store.reader_wait_s <= waited  # reported in the run summary (reader_wait_s)
    assert [s.path for s in store.stored_videos()] == ["/v/a.mp4", "/v/b.mp4"]


def test_writer_gives_up_on_a_reader_that_never_closes(store, index_dir, rng):
    store.release_connection()
    store.write_wait_s = 0.5
    reader = subprocess.Popen([sys.executable, "-c", _reader_script(index_dir, 10.0, hold_s=20.0)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().startswith("OPEN")
        with pytest.raises(IndexLocked, match="open in another process"):
            store.commit_results([result("/v/b.mp4", 2, rng)], PARAMS, 1)
    finally:
        reader.kill()
        reader.communicate(timeout=60)


# -- FAISS -------------------------------------------------------------------------------------------

def faiss_ids(index) -> list[int]:
    return sorted(vec.ids_of(index).tolist())


def duck_ids(store) -> list[int]:
    return [r[0] for r in store.con.execute("SELECT clip_id FROM clip_vectors ORDER BY clip_id").fetchall()]


def test_save_and_load_faiss(store, rng):
    ids, mats, _ = store.commit_results([result("/v/a.mp4", 3, rng), result("/v/b.mp4", 2, rng)], PARAMS, 1)
    index = vec.new_flat_index(DIM)
    index.add_with_ids(mats, ids)
    store.save_faiss(index)
    meta = vec.read_meta(store.index_dir)
    assert meta["model_id"] == MODEL
    assert meta["ntotal"] == 5
    assert meta["type"] == "IndexIDMap2"
    assert meta["checksum"] == {"count": 5, "id_sum": int(ids.sum()), "id_square_sum": int((ids ** 2).sum())}
    assert not [f for f in os.listdir(store.index_dir) if ".tmp" in f]
    loaded = store.load_faiss()
    assert loaded.ntotal == 5
    assert faiss_ids(loaded) == sorted(ids.tolist())
    assert store.status()["faiss"]["in_sync"] is True


def test_load_faiss_rebuilds_when_file_deleted(store, rng):
    ids, mats, _ = store.commit_results([result("/v/a.mp4", 3, rng)], PARAMS, 1)
    index = vec.new_flat_index(DIM)
    index.add_with_ids(mats, ids)
    store.save_faiss(index)
    os.remove(os.path.join(store.index_dir, vec.INDEX_FILE))
    rebuilt = store.load_faiss()
    assert faiss_ids(rebuilt) == duck_ids(store) == sorted(ids.tolist())
    assert os.path.exists(os.path.join(store.index_dir, vec.INDEX_FILE))  # and saved again
    assert store.load_faiss(rebuild_if_stale=False) is not None


def test_load_faiss_rebuilds_after_unsaved_commit(store, rng):
    ids1, mats1, _ = store.commit_results([result("/v/a.mp4", 3, rng)], PARAMS, 1)
    index = vec.new_flat_index(DIM)
    index.add_with_ids(mats1, ids1)
    store.save_faiss(index)
    ids2, mats2, _ = store.commit_results([result("/v/b.mp4", 4, rng)], PARAMS, 2)  # FAISS not saved
    assert store.load_faiss(rebuild_if_stale=False) is None
    rebuilt = store.load_faiss()
    assert rebuilt.ntotal == 7
    assert faiss_ids(rebuilt) == duck_ids(store) == sorted(ids1.tolist() + ids2.tolist())
    # vectors are DuckDB's: search for b's first clip finds it
    _, found = rebuilt.search(mats2[:1], 1)
    assert found[0, 0] == ids2[0]


def test_load_faiss_rebuilds_after_replacement(store, rng):
    ids1, mats1, _ = store.commit_results([result("/v/a.mp4", 3, rng)], PARAMS, 1)
    index = vec.new_flat_index(DIM)
    index.add_with_ids(mats1, ids1)
    store.save_faiss(index)
    ids2, _, removed = store.commit_results([result("/v/a.mp4", 3, rng, fingerprint="x")], PARAMS, 2)
    rebuilt = store.load_faiss()
    assert faiss_ids(rebuilt) == sorted(ids2.tolist())
    assert set(faiss_ids(rebuilt)).isdisjoint(removed)


def test_load_faiss_rebuilds_when_damaged(store, rng):
    ids, mats, _ = store.commit_results([result("/v/a.mp4", 2, rng)], PARAMS, 1)
    index = vec.new_flat_index(DIM)
    index.add_with_ids(mats, ids)
    store.save_faiss(index)
    with open(os.path.join(store.index_dir, vec.INDEX_FILE), "wb") as fh:
        fh.write(b"garbage")
    assert vec.read_index(store.index_dir) is None
    assert faiss_ids(store.load_faiss()) == sorted(ids.tolist())


def test_faiss_search_equals_brute_force(store):
    rng = np.random.default_rng(11)
    results = [result(f"/v/{i:03d}.mp4", int(rng.integers(1, 6)), rng) for i in range(40)]
    ids, mats, _ = store.commit_results(results, PARAMS, 1)
    index = store.load_faiss()
    queries = unit_rows(rng, 10)
    k = 7
    scores, found = index.search(queries, k)
    db = all_vectors(store)
    all_ids = np.array(sorted(db))
    matrix = np.stack([db[i] for i in all_ids])
    sims = queries @ matrix.T
    for q in range(len(queries)):
        order = np.argsort(-sims[q], kind="stable")[:k]
        assert found[q].tolist() == all_ids[order].tolist()
        np.testing.assert_allclose(scores[q], sims[q][order], atol=1e-5)


def test_read_only_store_does_not_write_rebuilt_faiss(index_dir, rng):
    with IndexStore(str(index_dir)) as s:
        s.register_model(MODEL, "test-model", "random", DIM, 32, 100.0)
        ids, _, _ = s.commit_results([result("/v/a.mp4", 2, rng)], PARAMS, 1)
    with IndexStore(str(index_dir), read_only=True) as ro:
        index = ro.load_faiss()
        assert faiss_ids(index) == sorted(ids.tolist())
    assert not os.path.exists(index_dir / vec.INDEX_FILE)


def test_id_checksum_matches_store(store, rng):
    ids, _, _ = store.commit_results([result("/v/a.mp4", 3, rng), result("/v/b.mp4", 2, rng)], PARAMS, 1)
    assert store.id_checksum() == vec.IdChecksum.of(ids)


# -- IdChecksum ------------------------------------------------------------------------------------------

def test_id_checksum_order_independent():
    ids = np.array([5, 1, 99, 7, 3], dtype=np.int64)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert vec.IdChecksum.of(rng.permutation(ids)) == vec.IdChecksum.of(ids)
    assert vec.IdChecksum.of(ids) == vec.IdChecksum(5, 115, 25 + 1 + 9801 + 49 + 9)


@pytest.mark.parametrize("other", [[5, 1, 99, 7], [5, 1, 99, 7, 4], [5, 1, 99, 7, 3, 3], [2, 4, 99, 7, 3]])
def test_id_checksum_differs_for_different_sets(other):
    # [2, 4, ...] has the same count and sum as [5, 1, ...] but a different sum of squares.
    assert vec.IdChecksum.of(np.array(other)) != vec.IdChecksum.of(np.array([5, 1, 99, 7, 3]))


def test_id_checksum_large_ids_do_not_overflow():
    big = np.array([2 ** 62, 2 ** 62 - 1], dtype=np.int64)
    c = vec.IdChecksum.of(big)
    assert c.id_sum == 2 ** 63 - 1
    assert c.id_square_sum == 2 ** 124 + (2 ** 62 - 1) ** 2


def test_id_checksum_empty():
    assert vec.IdChecksum.of(np.zeros(0, np.int64)) == vec.IdChecksum(0, 0, 0)


def test_write_index_roundtrip(tmp_path):
    index = vec.new_flat_index(4)
    index.add_with_ids(np.eye(4, dtype=np.float32), np.array([10, 20, 30, 40], dtype=np.int64))
    vec.write_index(index, str(tmp_path), "m", vec.IdChecksum.of(np.array([10, 20, 30, 40])),
                    extra={"note": "x"})
    back = vec.read_index(str(tmp_path))
    assert vec.ids_of(back).tolist() == [10, 20, 30, 40]
    meta = vec.read_meta(str(tmp_path))
    assert meta["note"] == "x" and meta["ntotal"] == 4
    assert sorted(os.listdir(tmp_path)) == [vec.INDEX_FILE, vec.META_FILE]
    assert vec.ids_of(vec.new_flat_index(4)).tolist() == []


def test_read_missing_index_and_meta(tmp_path):
    assert vec.read_index(str(tmp_path)) is None
    assert vec.read_meta(str(tmp_path)) is None
    (tmp_path / vec.META_FILE).write_text("{not json")
    assert vec.read_meta(str(tmp_path)) is None


def test_full_or_read_only_disk_is_described_in_one_line():
    import errno

    from indexer.store import describe_storage_failure

    assert "the disk is full" in describe_storage_failure(OSError(errno.ENOSPC, "No space left on device"))
    try:  # DuckDB's own error, raised while handling another (the commit retried in a finally)
        try:
            raise RuntimeError("the first commit failed")
        except RuntimeError:
            raise RuntimeError('Failed to commit: Could not write file "/x/vidx.duckdb.wal": No space left on device')
    except RuntimeError as exc:
        message = describe_storage_failure(exc)
    assert message.startswith("the disk is full (Failed to commit: Could not write file \"/x/vidx.duckdb.wal\"")
    assert "--db" in message and "run the same command again" in message
    chained = ValueError("wrapped")
    chained.__cause__ = OSError(errno.EROFS, "Read-only file system")
    assert "the file system is read-only" in describe_storage_failure(chained)
    assert describe_storage_failure(ValueError("a bug")) is None


# -- partial videos ------------------------------------------------------------------------------

def _clips(rng, indices, dim: int = DIM) -> tuple[ClipEmbedding, ...]:
    vecs = unit_rows(rng, len(indices), dim)
    return tuple(ClipEmbedding(ClipSpan(i, 2.0 * i, 2.0 * i + 2.0), v, (2.0 * i + 1.0,))
                 for i, v in zip(indices, vecs))


def test_partial_clips_saved_loaded_and_replaced(store, rng):
    recipe = PARAMS.recipe
    first, more = _clips(rng, [0, 1]), _clips(rng, [2, 3])
    store.save_partial("/v/a.mp4", "fp1", recipe, first)
    store.save_partial("/v/a.mp4", "fp1", recipe, more)
    got = store.load_partial([("/v/a.mp4", "fp1"), ("/v/b.mp4", "fpb")], recipe)
    assert list(got) == ["/v/a.mp4"]
    assert [c.span for c in got["/v/a.mp4"]] == [c.span for c in first + more]
    np.testing.assert_allclose(np.stack([c.vector for c in got["/v/a.mp4"]]),
                               np.stack([c.vector for c in first + more]), atol=1e-7)
    assert got["/v/a.mp4"][3].snippet_times_s == (7.0,)
    # Another fingerprint or recipe: nothing to resume.
    assert store.load_partial([("/v/a.mp4", "fp2")], recipe) == {}
    assert store.load_partial([("/v/a.mp4", "fp1")], IndexParams(MODEL, 5.0, 3, "exact").recipe) == {}
    # A restarted video saves from clip 1 again: clips from 1 on are replaced, not doubled.
    again = _clips(rng, [1, 2])
    store.save_partial("/v/a.mp4", "fp1", recipe, again)
    got = store.load_partial([("/v/a.mp4", "fp1")], recipe)["/v/a.mp4"]
    assert [c.span.index for c in got] == [0, 1, 2]
    np.testing.assert_allclose(got[1].vector, again[0].vector, atol=1e-7)
    # Saved under another fingerprint (the file changed): the old clips go.
    store.save_partial("/v/a.mp4", "fp2", recipe, _clips(rng, [0]))
    assert [c.span.index for c in store.load_partial([("/v/a.mp4", "fp2")], recipe)["/v/a.mp4"]] == [0]
    assert store.con.execute("SELECT count(*) FROM partial_clips").fetchone()[0] == 1


def test_partial_clips_after_a_gap_are_not_resumed(store, rng):
    store.save_partial("/v/a.mp4", "fp", PARAMS.recipe, _clips(rng, [0, 1]))
    store.con.execute("DELETE FROM partial_clips WHERE idx = 0")
    assert store.load_partial([("/v/a.mp4", "fp")], PARAMS.recipe) == {}


def test_partial_clips_dropped_by_commit_unless_failed(store, rng):
    for path in ("/v/ok.mp4", "/v/bad.mp4"):
        store.save_partial(path, f"fp-{path}", PARAMS.recipe, _clips(rng, [0, 1]))
    store.commit_results([result("/v/ok.mp4", 3, rng),
                          result("/v/bad.mp4", 0, rng, status=VideoStatus.FAILED, error="timeout")], PARAMS, 1)
    left = store.load_partial([("/v/ok.mp4", "fp-/v/ok.mp4"), ("/v/bad.mp4", "fp-/v/bad.mp4")], PARAMS.recipe)
    assert list(left) == ["/v/bad.mp4"]  # '--retry-failed' resumes it
    assert [p["path"] for p in store.status()["partial"]] == ["/v/bad.mp4"]


def test_partial_clips_of_missing_files_pruned_and_reset(store, rng, tmp_path):
    root = tmp_path / "archive"
    here, elsewhere = str(root / "here.mp4"), str(tmp_path / "other" / "x.mp4")
    for path in (here, str(root / "gone.mp4"), elsewhere):
        store.save_partial(path, "fp", PARAMS.recipe, _clips(rng, [0]))
    # Under the run's root and not discovered: gone. Outside the root: kept (not looked at).
    assert store.prune_partial([str(root)], {here}) == 1
    assert [p["path"] for p in store.status()["partial"]] == [here, elsewhere]
    store.reset()
    assert store.status()["partial"] == []


def test_status_of_an_index_without_partial_tables(index_dir, rng):
    """An index written by a vidx from before partial videos: read-only status still works."""
    with IndexStore(str(index_dir)) as s:
        s.register_model(MODEL, "test-model", "random", DIM, 32, 100.0)
        s.commit_results([result("/v/a.mp4", 2, rng)], PARAMS, 1)
        s.con.execute("DROP TABLE partial_clips")
        s.con.execute("DROP TABLE partial_videos")
    with IndexStore(str(index_dir), read_only=True) as s:
        st = s.status()
    assert st["partial"] == [] and st["clips"] == 2


def test_partial_clips_of_a_name_that_is_not_utf8(store, rng, tmp_path):
    import os

    path = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.mp4")  # a Latin-1 byte
    store.save_partial(path, "fp", PARAMS.recipe, _clips(rng, [0, 1]))
    assert [c.span.index for c in store.load_partial([(path, "fp")], PARAMS.recipe)[path]] == [0, 1]
    assert [p["path"] for p in store.status()["partial"]] == [path]
    assert store.prune_partial([str(tmp_path)], {path}) == 0  # still there: kept
    assert store.prune_partial([str(tmp_path)], set()) == 1
