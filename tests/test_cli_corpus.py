"""End to end on the shared corpus of real-world files: one index run, status, a no-op re-run.

The corpus (tests/../../shared/videos, described in MANIFEST.tsv) holds real videos of many
containers and codecs plus files that are not videos (zero bytes, an HTML page named .avi,
audio-only and cover-art mp3). Bad files are data: the run must succeed and record them.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import SHARED_VIDEOS
from test_cli_support import (assert_clips_tile_video, assert_index_consistent, cli_env, clips_by_path,
                              index_args, query, ray_started, run_vidx, videos)

# Files that can never be indexed, with the status and (part of) the reason they must get.
NOT_INDEXABLE = {
    "moviepy_result_zero_length.webm": ("failed", "empty file"),
    "opencvforpython_Megamind_actually_html.avi": ("failed", "HTML"),
    "moviepy_crunching.mp3": ("skipped", "no video stream"),
    "moviepy_with-attached-pic.mp3": ("skipped", "cover art"),
}
MAY_FAIL = {"decord_corrupted.mp4"}  # damaged H.264: indexed as far as it decodes, or failed with a reason


def _corpus_files() -> list[str]:
    return sorted(p.name for p in SHARED_VIDEOS.iterdir()
                  if p.is_file() and p.name != "MANIFEST.tsv")


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    """One index run over a copy of the 62 files (shared by the tests of this module)."""
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"shared corpus not found at {SHARED_VIDEOS}")
    names = _corpus_files()
    root = tmp_path_factory.mktemp("corpus")
    folder = root / "corpus"
    folder.mkdir()
    for n in names:
        shutil.copy2(SHARED_VIDEOS / n, folder / n)
    ray_dir = Path(tempfile.mkdtemp(prefix="vxr", dir="/tmp"))
    env = cli_env(ray_dir)
    res = run_vidx(index_args([folder], root / "index"), env)
    yield {"names": names, "folder": folder, "db": root / "index", "env": env, "ray_dir": ray_dir, "res": res}
    shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.mark.slow
def test_shared_corpus_index_status_and_noop_rerun(corpus_run):
    names, folder, db, env, ray_tmp = (corpus_run[k] for k in ("names", "folder", "db", "env", "ray_dir"))
    res = corpus_run["res"]
    assert len(names) == 62, f"the shared corpus changed: {len(names)} files"
    assert res.rc == 0, res.describe()
    assert "Traceback" not in res.stderr, res.describe()
    summary = res.json
    assert summary["status"] == "ok"
    assert summary["discovered"] == 62

    # -- DuckDB: every file exactly once, with the right status ---------------------------------
    rows = videos(db)
    assert sorted(rows) == sorted(str(folder / n) for n in names), "videos rows != files on disk"
    for name, (status, reason_part) in NOT_INDEXABLE.items():
        r = rows[str(folder / name)]
        assert r["status"] == status, f"{name}: {r['status']} ({r['error']})"
        assert r["error"] and reason_part.lower() in r["error"].lower(), f"{name}: reason {r['error']!r}"
    for name in names:
        if name in NOT_INDEXABLE:
            continue
        r = rows[str(folder / name)]
        if name in MAY_FAIL and r["status"] == "failed":
            assert r["error"], f"{name} failed without a reason"
            continue
        assert r["status"] == "indexed", f"{name}: {r['status']}: {r['error']}"
        assert r["error"] is None
        assert r["duration_s"] and r["duration_s"] > 0, f"{name}: duration {r['duration_s']}"
        assert r["model_id"] == "vidx-tiny|random:0"

    # -- clips tile each indexed video; counts match the clip plan -----------------------------
    clips = clips_by_path(db)
    indexed = {p: r for p, r in rows.items() if r["status"] == "indexed"}
    assert set(clips) == set(indexed), "videos with clips != indexed videos"
    for path, r in indexed.items():
        # idx 0..n-1 from 0 s without gap or overlap, up to (at least) the duration; whether the end
        # is exactly the recorded duration is test_clips_end_at_recorded_duration's business.
        assert_clips_tile_video(path, clips[path], r["duration_s"], r["notes"], end_may_exceed_s=0.5)
        assert all(c[3] - c[2] <= 5.0 + 1e-6 for c in clips[path]), f"{path}: a clip is longer than clip_s"
        assert len(clips[path]) >= math.ceil(r["duration_s"] / 5.0 - 1e-6), f"{path}: too few clips"
    assert_index_consistent(db)

    # -- the JSON summary agrees with the database -------------------------------------------
    by_status = {s: sum(1 for r in rows.values() if r["status"] == s) for s in ("indexed", "failed", "skipped")}
    assert summary["indexed"] == by_status["indexed"] >= 57
    assert summary["failed"] == by_status["failed"]
    assert summary["skipped"] == by_status["skipped"] == 2
    assert summary["indexed"] + summary["failed"] + summary["skipped"] == 62
    n_clips = query(db, "SELECT count(*) FROM clips")[0][0]
    assert summary["clips_added"] == n_clips > 0
    assert summary["frames_embedded"] == query(db, "SELECT sum(frames_embedded) FROM videos "
                                                   "WHERE status = 'indexed'")[0][0]
    assert summary["video_seconds"] == pytest.approx(sum(r["duration_s"] for r in indexed.values()), rel=1e-6)
    db_failures = {(p, r["status"], r["error"]) for p, r in rows.items() if r["status"] != "indexed"}
    assert {(f["path"], f["status"], f["reason"]) for f in summary["failures"]} == db_failures
    assert query(db, "SELECT status FROM runs ORDER BY run_id") == [("ok",)]

    # -- vidx status shows the same -----------------------------------------------------------
    st = run_vidx(["status", "--db", str(db), "--json"], env)
    assert st.rc == 0, st.describe()
    status = st.json
    assert status["videos"] == by_status
    assert status["clips"] == n_clips
    assert status["model_id"] == "vidx-tiny|random:0"
    assert status["faiss"]["in_sync"] is True and status["faiss"]["ntotal"] == n_clips
    assert {(f["path"], f["status"], f["reason"]) for f in status["failures"]} == db_failures
    assert status["last_run"]["status"] == "ok" and status["last_run"]["stats"]["indexed"] == summary["indexed"]

    # -- a second run over the same folder is a no-op: no Ray, no model ------------------------
    shutil.rmtree(ray_tmp, ignore_errors=True)
    ray_tmp.mkdir()
    again = run_vidx(index_args([folder], db), env)
    assert again.rc == 0, again.describe()
    s2 = again.json
    assert (s2["indexed"], s2["unchanged"], s2["failed"], s2["skipped"], s2["deleted"], s2["renamed"],
            s2["copied"], s2["frames_embedded"]) == (0, 62, 0, 0, 0, 0, 0, 0)
    assert s2["failed_before"] == by_status.get("failed", 0) > 0  # the earlier failures still stand
    assert not ray_started(ray_tmp), "a run with nothing to do started Ray"
    assert again.wall_s < 5.0, f"no-op run took {again.wall_s:.1f} s (Ray or a model was started?)"
    assert query(db, "SELECT count(*) FROM clips")[0][0] == n_clips
    assert_index_consistent(db)


@pytest.mark.slow
def test_clips_end_at_recorded_duration(corpus_run):
    """The last clip of every indexed video ends at its recorded duration (clips tile [0, duration))."""
    assert corpus_run["res"].rc == 0, corpus_run["res"].describe()
    db = corpus_run["db"]
    rows = videos(db)
    clips = clips_by_path(db)
    past = {}
    for path, r in rows.items():
        if r["status"] != "indexed" or (r["notes"] and "not indexed" in r["notes"]):
            continue
        end = clips[path][-1][3]
        if abs(end - r["duration_s"]) > 1e-5:
            past[os.path.basename(path)] = (r["duration_s"], end)
    assert not past, f"clips end != videos.duration_s (duration, end of last clip): {past}"
