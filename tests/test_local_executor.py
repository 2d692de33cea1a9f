"""The in-process executor (``pipelines/local.py``): the same stages as the Ray pipeline, no Ray.

* In-process tests route ``pipelines.index.index_paths`` through ``run_local`` (what
  ``--executor local`` does) and check what a scheduler must do: every file committed once,
  a decode that hangs is abandoned and recorded, an embedding error fails only its file, the
  decode thread stays a bounded number of items ahead of the model.
* The slow test runs ``python -m pipelines.local index`` and ``vidx index`` (Ray) on the same
  folder: same videos, clips and vectors; Ray is never started by the local run.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import make_video
from indexer.watch import DecodeHeartbeat
from test_cli_support import (REPO, Result, assert_index_consistent, cli_env, faiss_meta_ntotal, index_args,  # noqa: F401
                              kill_group, query, ray_started, ray_tmp, wait_for)
from test_cluster import ARGS, N_VIDEOS, assert_same_index, corpus8, json_summary, single_node  # noqa: F401


@pytest.fixture
def local_executor(monkeypatch):
    import pipelines.index as index_module
    from pipelines.local import index_with_local

    monkeypatch.setattr(index_module, "_index_with_ray", index_with_local)


@pytest.fixture
def three_videos(video_dir):
    for i, src in enumerate(("testsrc2", "smptebars", "mandelbrot")):
        make_video(video_dir / f"v{i}.mp4", f"{src}=size=160x120:rate=25", duration_s=3 + i)
    return video_dir


def _settings(tiny_settings, **changes):
    return dataclasses.replace(tiny_settings, tags=False, **changes)


def test_local_run_indexes_every_file_once(local_executor, three_videos, tiny_settings, index_dir):
    from pipelines.index import index_paths

    s = index_paths([str(three_videos)], _settings(tiny_settings), show_progress=False)
    assert (s.status, s.indexed, s.failed) == ("ok", 3, 0), s.failures
    assert len(s.workers) == 1 and sum(s.workers.values()) == 3  # one process did it all
    assert_index_consistent(index_dir)
    assert query(index_dir, "SELECT count(*) FROM clips")[0][0] == s.clips_added > 0
    again = index_paths([str(three_videos)], _settings(tiny_settings), show_progress=False)
    assert (again.indexed, again.unchanged) == (0, 3)


def test_hung_decode_is_abandoned_and_recorded(local_executor, three_videos, tiny_settings, index_dir, monkeypatch):
    import pipelines.index as index_module
    import pipelines.local as local
    from pipelines.index import index_paths

    release = threading.Event()
    real = local.decode_video

    def decode(job):
        if job.file.path.endswith("v1.mp4"):
            release.wait(120)  # hangs like a libav call that never returns (until the test ends)
        yield from real(job)

    monkeypatch.setattr(local, "decode_video", decode)
    monkeypatch.setattr(index_module, "_DECODE_GRACE_S", 0.0)
    t0 = time.monotonic()
    try:
        s = index_paths([str(three_videos)], _settings(tiny_settings, decode_timeout_s=0.5), show_progress=False)
    finally:
        release.set()
    assert time.monotonic() - t0 < 60
    assert (s.indexed, s.failed) == (2, 1), s.failures
    assert s.failures[0]["path"].endswith("v1.mp4") and "hung" in s.failures[0]["reason"]
    assert_index_consistent(index_dir)


def test_closing_the_feed_waits_for_the_decode_thread(three_videos, tiny_settings, monkeypatch):
    """After Ctrl-C the decode thread must be gone before Python shuts down (a daemon thread in
    OpenCV code at shutdown aborts the process instead of exiting 130)."""
    import types

    import pipelines.local as local

    def decode(job):
        for i in range(1000):  # an endless supply of chunks, each taking a while
            time.sleep(0.05)
            yield f"{job.file.path}:{i}"

    monkeypatch.setattr(local, "decode_video", decode)
    jobs = [types.SimpleNamespace(file=types.SimpleNamespace(path=str(p))) for p in sorted(three_videos.iterdir())]
    feed = local._DecodeFeed(jobs, _settings(tiny_settings))
    it = iter(feed)
    assert next(it)[1].endswith(":0")
    thread = feed.worker.thread
    assert thread.is_alive()
    feed.close()
    assert not thread.is_alive(), "close() returned while the decode thread was still running"


def test_exit_leaves_at_once_when_a_decode_thread_is_stuck(tmp_path):
    """A decode thread that never returns (a hung file) must not keep the process from exiting
    with its code: the helper leaves with os._exit after flushing what was printed."""
    script = (
        "import threading, time\n"
        "from pipelines.local import exit_without_finalizing_if_decoders_alive as leave\n"
        "threading.Thread(target=time.sleep, args=(600,), name='vidx-decode-7').start()  # not a daemon\n"
        "print('summary printed', flush=False)\n"
        "leave(130)\n"
        "print('not reached')\n"
    )
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t0 < 60
    assert out.returncode == 130, out.stderr[-2000:]
    assert out.stdout == "summary printed\n"
    quiet = subprocess.run([sys.executable, "-c", "from pipelines.local import exit_without_finalizing_if_decoders_alive "
                            "as leave\nimport sys\nsys.exit(leave(3) + 4)"], cwd=str(REPO), capture_output=True,
                           text=True, timeout=120)
    assert quiet.returncode == 7, quiet.stderr[-2000:]  # no decode thread: the code is just returned


def test_embedding_error_fails_only_its_file(local_executor, three_videos, tiny_settings, index_dir, monkeypatch):
    import pipelines.local as local
    from pipelines.index import index_paths

    real = local.embed_chunk

    def embed(model, header, frames, batch_size):
        if header.path.endswith("v0.mp4"):
            raise RuntimeError("CUDA error: an illegal memory access")
        return real(model, header, frames, batch_size)

    monkeypatch.setattr(local, "embed_chunk", embed)
    s = index_paths([str(three_videos)], _settings(tiny_settings), show_progress=False)
    assert (s.indexed, s.failed) == (2, 1), s.failures
    assert s.failures[0]["path"].endswith("v0.mp4") and "embedding failed" in s.failures[0]["reason"]
    assert_index_consistent(index_dir)


def test_decoder_stays_a_bounded_number_of_items_ahead(local_executor, three_videos, tiny_settings, monkeypatch):
    import pipelines.local as local
    from pipelines.index import index_paths

    produced = consumed = 0
    ahead: list[int] = []
    real_decode, real_embed = local.decode_video, local.embed_chunk

    def decode(job):
        nonlocal produced
        for item in real_decode(dataclasses.replace(job, chunk_frames=3)):  # many small chunks
            if not isinstance(item, DecodeHeartbeat):  # signs of life for the bar, not data
                produced += 1
            yield item

    def embed(model, header, frames, batch_size):
        nonlocal consumed
        consumed += 2  # header + frames
        ahead.append(produced - consumed)
        time.sleep(0.05)  # a slow model: the decoder runs ahead until the queue is full
        return real_embed(model, header, frames, batch_size)

    monkeypatch.setattr(local, "decode_video", decode)
    monkeypatch.setattr(local, "embed_chunk", embed)
    s = index_paths([str(three_videos)], _settings(tiny_settings, clip_s=0.5), show_progress=False)
    assert s.indexed == 3
    assert len(ahead) > 10
    # queue + the item the decode thread holds while blocked + a video's outcome/start markers
    assert max(ahead) <= local._QUEUE_ITEMS + 3, ahead
    assert max(ahead) >= local._QUEUE_ITEMS - 1, ahead  # ... and it did run ahead (overlap)


def interrupt_during_second_commit(monkeypatch) -> None:
    """Ctrl-C (SIGINT to this process) while the 2nd commit's transaction runs a DuckDB query.

    DuckDB turns a SIGINT that arrives during a query into RuntimeError("Query interrupted"),
    not KeyboardInterrupt: a commit must defer the signal, then stop cleanly.
    """
    import os

    from indexer.store import IndexStore

    original = IndexStore.commit_results
    calls: list[int] = []

    def commit_results(self, results, params, run_id, after_insert=None):
        calls.append(1)

        def slow(con, video_ids):
            if after_insert is not None:
                after_insert(con, video_ids)
            if len(calls) == 2:
                threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
                con.execute("SELECT count(*) FROM range(3000000000)").fetchall()  # ~1-3 s of DuckDB

        return original(self, results, params, run_id, after_insert=slow)

    monkeypatch.setattr(IndexStore, "commit_results", commit_results)


def test_ctrl_c_during_a_commit_stops_cleanly_and_keeps_that_commit(local_executor, three_videos, tiny_settings,
                                                                   index_dir, monkeypatch):
    from pipelines.index import index_paths

    interrupt_during_second_commit(monkeypatch)
    s = index_paths([str(three_videos)], _settings(tiny_settings, commit_every_s=0.0), show_progress=False)
    assert s.status == "interrupted"
    assert s.indexed == 2  # the commit the signal landed in was finished, then the run stopped
    assert query(index_dir, "SELECT count(*) FROM videos")[0][0] == 2
    assert_index_consistent(index_dir)


def _local_cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pipelines.local", *args]


@pytest.mark.slow
def test_local_cli_matches_ray_and_starts_no_ray(corpus8, single_node, tmp_path, ray_tmp):
    db = tmp_path / "index"
    out = subprocess.run(_local_cli(index_args([corpus8], db, *ARGS)), cwd=str(REPO), env=cli_env(ray_tmp),
                         capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads(out.stdout)  # stdout is the JSON summary and nothing else
    assert (s["indexed"], s["failed"], s["status"]) == (N_VIDEOS, 0, "ok"), s
    assert not ray_started(ray_tmp), "the local executor started Ray"
    assert len(s["workers"]) == 1
    assert_same_index(db, single_node)


@pytest.mark.slow
def test_local_cli_ctrl_c_keeps_finished_videos_and_rerun_completes(corpus8, single_node, tmp_path, ray_tmp):
    db = tmp_path / "index"
    args = _local_cli(index_args([corpus8], db, *ARGS))
    env = cli_env(ray_tmp, VIDX_COMMIT_EVERY_S="0.2", VIDX_FAISS_FLUSH_S="0")
    proc = subprocess.Popen(args, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_for(lambda: faiss_meta_ntotal(db) > 0, proc, 300, "a first commit")
        kill_group(proc, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    n = query(db, "SELECT count(*) FROM videos")[0][0]
    assert 0 < n <= N_VIDEOS
    assert json_summary(Result(130, out, err, 0))["indexed"] == n
    assert query(db, "SELECT status FROM runs") == [("interrupted",)]
    assert_index_consistent(db)  # an orderly stop flushes FAISS too
    again = subprocess.run(args, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=420)
    assert again.returncode == 0, again.stderr[-3000:]
    s = json.loads(again.stdout)
    assert (s["indexed"], s["unchanged"]) == (N_VIDEOS - n, n), s
    assert_same_index(db, single_node)


def test_a_full_disk_is_one_line_and_exit_1(local_executor, three_videos, index_dir, monkeypatch, capsys):
    import duckdb

    from indexer.store import IndexStore
    from vidx.cli import main

    def disk_full(self, *args, **kwargs):
        raise duckdb.IOException(f'Could not write file "{index_dir}/vidx.duckdb.wal": No space left on device')

    monkeypatch.setattr(IndexStore, "commit_results", disk_full)
    rc = main(["index", str(three_videos), "--db", str(index_dir), "--model", "vidx-tiny", "--pretrained", "random",
               "--executor", "local", "--no-tags", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "vidx: error: the disk is full (Could not write file" in err and "Traceback" not in err
