"""A video interrupted part way is resumed, not redone (``checkpoint_s``, ``partial_*`` tables).

* In-process (local executor): the run dies part way through a long video after some of its
  clips were saved; the next run embeds only the rest, and the index it ends with is the
  index an uninterrupted run makes (same clips, vectors, shots, video vector), with shots on
  and off.
* Through the CLI with Ray: ``kill -9`` of the whole process group once clips are saved, then
  the same command again.
* Ctrl-C (local executor and Ray) saves the embedded clips of the video in flight at once;
  a changed or deleted file's saved part is not used; ``checkpoint_s = 0`` saves nothing.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import numpy as np
import pytest

from conftest import make_color_video, make_video
from test_cli_support import assert_index_consistent, cli_env, index_args, kill_group, query, ray_tmp  # noqa: F401

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "cyan", "magenta", "orange", "purple",
           "gray", "brown"]


class _Crash(BaseException):
    """The run dying part way: no handler of the run catches it, so only what was saved before
    is kept (the real ``kill -9``, which runs no clean-up at all, is the CLI test below)."""


@pytest.fixture
def local_executor(monkeypatch):
    import pipelines.index as index_module
    from pipelines.local import index_with_local

    monkeypatch.setattr(index_module, "_index_with_ray", index_with_local)
    monkeypatch.setattr(index_module, "_CHUNK_FRAMES", 6)  # 2 clips per chunk: many chances to save


@pytest.fixture
def long_video(video_dir) -> Path:
    # 12 shots of 2.5 s: with clip_s 2 every shot is two clips, 24 in all.
    return make_color_video(video_dir / "long.mp4", COLOURS, seconds_each=2.5)


def _settings(tiny_settings, index_dir, **changes):
    return dataclasses.replace(tiny_settings, db=str(index_dir), tags=False, **changes)


def _index_rows(index_dir) -> dict:
    clips = query(index_dir, "SELECT c.idx, c.start_s, c.end_s, c.snippet_times_s, v.vector FROM clips c "
                             "JOIN clip_vectors v USING (clip_id) ORDER BY c.idx")
    return {
        "spans": [(r[0], r[1], r[2], tuple(r[3])) for r in clips],
        "vectors": np.array([r[4] for r in clips], np.float32),
        "shots": query(index_dir, "SELECT idx, start_s, end_s, start_frame, end_frame, transition FROM shots "
                                  "ORDER BY idx"),
        "video_vector": np.array(query(index_dir, "SELECT vector FROM video_vectors")[0][0], np.float32),
    }


def _crash_after(monkeypatch, n_chunks: int, exc: type[BaseException] = _Crash) -> list[int]:
    import pipelines.local as local

    real = local.embed_chunk
    calls = [0]

    def embed(*args, **kwargs):
        calls[0] += 1
        if calls[0] > n_chunks:
            raise exc()
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "embed_chunk", embed)
    return calls


def _run_dying_after(monkeypatch, n_chunks: int, paths: list, settings) -> None:
    """Index ``paths`` in a run that dies (like a kill) when its model gets chunk n_chunks + 1."""
    from pipelines.index import index_paths

    with monkeypatch.context() as m:
        _crash_after(m, n_chunks)
        with pytest.raises(_Crash):
            index_paths([str(p) for p in paths], settings, show_progress=False)


@pytest.mark.parametrize("shots", [True, False], ids=["shots", "no-shots"])
def test_resumed_video_equals_an_uninterrupted_run(local_executor, monkeypatch, long_video, tiny_settings,
                                                   tmp_path, shots):
    from pipelines.index import index_paths

    clean_dir, resumed_dir = tmp_path / "clean", tmp_path / "resumed"
    clean = index_paths([str(long_video)], _settings(tiny_settings, clean_dir, shots=shots), show_progress=False)
    assert (clean.indexed, clean.resumed) == (1, 0)
    n_clips = clean.clips_added
    assert n_clips >= 12

    settings = _settings(tiny_settings, resumed_dir, shots=shots, checkpoint_s=1e-6)  # save after every chunk
    _run_dying_after(monkeypatch, 5, [long_video], settings)
    saved = query(resumed_dir, "SELECT idx FROM partial_clips ORDER BY idx")
    assert [r[0] for r in saved] == list(range(10))  # 5 chunks of 2 clips, saved in order
    assert query(resumed_dir, "SELECT count(*) FROM videos")[0][0] == 0  # the video itself is not in yet

    again = index_paths([str(long_video)], settings, show_progress=False)
    assert (again.status, again.indexed, again.resumed, again.clips_resumed) == ("ok", 1, 1, 10)
    assert again.clips_added == n_clips
    saved_frames = sum(len(times) for idx, _, _, times in _index_rows(clean_dir)["spans"] if idx < 10)
    assert again.frames_embedded == clean.frames_embedded - saved_frames  # only the rest was embedded
    assert query(resumed_dir, "SELECT count(*) FROM partial_clips")[0][0] == 0
    assert query(resumed_dir, "SELECT count(*) FROM partial_videos")[0][0] == 0
    notes = query(resumed_dir, "SELECT notes FROM videos")[0][0]
    assert "resumed: 10 clips saved by an earlier run were kept" in notes
    assert_index_consistent(resumed_dir)

    a, b = _index_rows(clean_dir), _index_rows(resumed_dir)
    assert a["spans"] == b["spans"]
    assert a["shots"] == b["shots"]
    np.testing.assert_allclose(a["vectors"], b["vectors"], atol=1e-5)
    np.testing.assert_allclose(a["video_vector"], b["video_vector"], atol=1e-5)


def test_ctrl_c_keeps_the_embedded_clips_of_the_video_in_flight(local_executor, monkeypatch, long_video,
                                                                 tiny_settings, tmp_path):
    from pipelines.index import index_paths

    settings = _settings(tiny_settings, tmp_path / "idx", checkpoint_s=3600.0)  # no save would be due yet
    with monkeypatch.context() as m:
        _crash_after(m, 4, KeyboardInterrupt)
        stopped = index_paths([str(long_video)], settings, show_progress=False)
    assert (stopped.status, stopped.indexed) == ("interrupted", 0)
    assert [r[0] for r in query(tmp_path / "idx", "SELECT idx FROM partial_clips ORDER BY idx")] == list(range(8))
    again = index_paths([str(long_video)], settings, show_progress=False)
    assert (again.status, again.indexed, again.resumed, again.clips_resumed) == ("ok", 1, 1, 8)


def test_saved_part_is_dropped_when_the_file_changes(local_executor, monkeypatch, long_video, tiny_settings,
                                                     tmp_path):
    from pipelines.index import index_paths

    settings = _settings(tiny_settings, tmp_path / "idx", checkpoint_s=1e-6)
    _run_dying_after(monkeypatch, 3, [long_video], settings)
    assert query(tmp_path / "idx", "SELECT count(*) FROM partial_clips")[0][0] == 6
    make_color_video(long_video, COLOURS[::-1], seconds_each=2.5)  # other content, same name
    again = index_paths([str(long_video)], settings, show_progress=False)
    assert (again.indexed, again.resumed, again.clips_resumed) == (1, 0, 0)
    assert query(tmp_path / "idx", "SELECT count(*) FROM partial_clips")[0][0] == 0


def test_saved_part_of_a_deleted_file_is_dropped(local_executor, monkeypatch, long_video, video_dir,
                                                 tiny_settings, tmp_path):
    from pipelines.index import index_paths

    settings = _settings(tiny_settings, tmp_path / "idx", checkpoint_s=1e-6)
    _run_dying_after(monkeypatch, 2, [long_video], settings)
    assert query(tmp_path / "idx", "SELECT count(*) FROM partial_videos")[0][0] == 1
    long_video.unlink()
    make_video(video_dir / "other.mp4", duration_s=2.0)
    again = index_paths([str(video_dir)], settings, show_progress=False)
    assert again.indexed == 1
    assert query(tmp_path / "idx", "SELECT count(*) FROM partial_videos")[0][0] == 0
    assert query(tmp_path / "idx", "SELECT count(*) FROM partial_clips")[0][0] == 0


def test_checkpoints_off(local_executor, monkeypatch, long_video, tiny_settings, tmp_path):
    from pipelines.index import index_paths

    settings = _settings(tiny_settings, tmp_path / "idx", checkpoint_s=0.0)
    _run_dying_after(monkeypatch, 5, [long_video], settings)
    assert query(tmp_path / "idx", "SELECT count(*) FROM partial_clips")[0][0] == 0
    again = index_paths([str(long_video)], settings, show_progress=False)
    assert (again.indexed, again.resumed) == (1, 0)


def _saved_clips(db: Path) -> int:
    try:
        return query(db, "SELECT count(*) FROM partial_clips")[0][0]
    except Exception:  # the writer holds the file for a moment, or has not created it yet
        return 0


@pytest.mark.slow
def test_kill_9_mid_video_then_the_same_command_resumes_it(video_dir, tmp_path, ray_tmp):
    from test_cli_support import popen_vidx, run_vidx, wait_for

    # Two hours at 2 fps: cheap to make and decode, but 1,440 clips keep the model busy for
    # seconds after it loads (the decoder runs ahead meanwhile), so the kill lands mid-video.
    duration_s = 7200
    make_video(video_dir / "long.mp4", "testsrc2=size=160x120:rate=2", duration_s=duration_s)
    db = tmp_path / "db"
    env = cli_env(ray_tmp)
    args = index_args([video_dir], db, "--checkpoint-s", "0.3")
    proc = popen_vidx(args, env)
    try:
        wait_for(lambda: _saved_clips(db) > 0, proc, 300, "clips of the long video to be saved")
    finally:
        kill_group(proc, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = _saved_clips(db)
    assert saved > 0 and query(db, "SELECT count(*) FROM videos")[0][0] == 0  # killed mid-video

    status = run_vidx(["status", "--db", str(db)], env)
    assert status.rc == 0 and "1 video(s) stopped part way" in status.stdout and f"({saved} clips saved)" \
        in status.stdout, status.stdout

    again = run_vidx(args, env)
    assert again.rc == 0, again.describe()
    s = again.json
    assert (s["indexed"], s["resumed"], s["clips_resumed"], s["failed"]) == (1, 1, saved, 0), s
    spans = query(db, "SELECT start_s, end_s FROM clips ORDER BY idx")
    assert len(spans) == s["clips_added"] == duration_s // 5
    assert spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(duration_s)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # every instant in exactly one clip
    assert_index_consistent(db)
    assert query(db, "SELECT count(*) FROM partial_clips")[0][0] == 0


@pytest.mark.slow
def test_ctrl_c_with_ray_keeps_the_embedded_clips_of_videos_in_flight(monkeypatch, long_video, tiny_settings,
                                                                       tmp_path, ray_tmp):
    import pipelines.index as index_module
    from pipelines.index import index_paths

    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))  # embedded Ray in this process
    monkeypatch.setattr(index_module, "_CHUNK_FRAMES", 6)
    real, embedded_prefix = index_module.save_due_partial, []

    def interrupt_once_8_clips_are_embedded(store, asm, params, settings, force=False):
        # The model actors can return chunks out of order, so the count of chunks back says
        # little: Ctrl-C comes once clips 0..7 are all embedded, whichever chunks brought them.
        if not force:
            have = {span.index for chunk in asm.chunks for span in chunk.spans}
            prefix = next(i for i in range(len(have) + 1) if i not in have)
            if prefix >= 8:
                embedded_prefix.append(prefix)
                raise KeyboardInterrupt
        return real(store, asm, params, settings, force=force)

    settings = _settings(tiny_settings, tmp_path / "idx", checkpoint_s=3600.0)  # no save would be due yet
    with monkeypatch.context() as m:
        m.setattr(index_module, "save_due_partial", interrupt_once_8_clips_are_embedded)
        stopped = index_paths([str(long_video)], settings, show_progress=False)
    assert (stopped.status, stopped.indexed) == ("interrupted", 0)
    saved = [r[0] for r in query(tmp_path / "idx", "SELECT idx FROM partial_clips ORDER BY idx")]
    assert saved == list(range(embedded_prefix[0]))  # every clip embedded in order, none past a gap
    again = index_paths([str(long_video)], settings, show_progress=False)
    assert (again.status, again.indexed, again.resumed, again.clips_resumed) == ("ok", 1, 1, len(saved))
    assert_index_consistent(tmp_path / "idx")
