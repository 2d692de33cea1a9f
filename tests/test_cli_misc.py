"""Awkward file names, systemic errors (weights, model mixing, no index), swapped names, byte copies.

The awkward-names index is built once (module fixture ``names_index``; one Ray start) and
reused by the tests that need an existing index: model mixing (changes nothing), swapped names
(swaps two files of the folder) and byte copy (indexes a copy placed outside the folder, passing
only that copy, so the swap's outcome does not matter to it). They run in that order.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_video
from test_cli_support import (assert_index_consistent, cli_env, clips_by_path, faiss_ids, index_args, query,
                              ray_started, ray_tmp, run_vidx, vectors, videos)  # noqa: F401

SIZE = "size=160x120:rate=25"
AWKWARD = ["with space.mp4", "vidéo ñ 動画.mp4", "it's \"q\".mp4", "-dash.mp4", "sub dir é/x.mp4"]
EXPLICIT = "-explicit.mp4"  # passed as a relative path after '--'


@pytest.fixture(scope="module")
def names_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    folder, other, db = root / "awkward names", root / "other", root / "index"
    sources = ["testsrc2", "smptebars", "mandelbrot", "testsrc", "rgbtestsrc"]
    for name, src in zip(AWKWARD, sources):
        make_video(folder / name, f"{src}={SIZE}", 2.0)
    make_video(other / EXPLICIT, f"cellauto={SIZE}", 2.0)
    ray_dir = Path(tempfile.mkdtemp(prefix="vxr", dir="/tmp"))
    env = cli_env(ray_dir)
    # Options first, then '--': the relative '-explicit.mp4' must be taken as a path, not an option.
    args = ["index", "--db", str(db), "--model", "vidx-tiny", "--pretrained", "random", "--json",
            "--no-progress", "--", str(folder), EXPLICIT]
    res = run_vidx(args, env, cwd=other)
    yield {"folder": folder, "other": other, "db": db, "result": res, "env": env, "ray_dir": ray_dir}
    shutil.rmtree(ray_dir, ignore_errors=True)


def test_awkward_file_names_are_indexed(names_index):
    res, folder, db = names_index["result"], names_index["folder"], names_index["db"]
    assert res.rc == 0, res.describe()
    s = res.json
    assert (s["discovered"], s["indexed"], s["failed"]) == (6, 6, 0), s
    expected = sorted([str(folder / n) for n in AWKWARD] + [str(names_index["other"] / EXPLICIT)])
    rows = videos(db)
    assert sorted(rows) == expected  # stored exactly as on disk (unicode, quotes, spaces, dashes)
    assert all(r["status"] == "indexed" for r in rows.values()), rows
    clips = clips_by_path(db)
    assert all(len(clips[p]) >= 1 for p in expected), {p: len(c) for p, c in clips.items()}
    assert s["clips_added"] == sum(len(c) for c in clips.values())
    assert_index_consistent(db)

    st = run_vidx(["status", "--db", str(db), "--json"], names_index["env"])
    assert st.rc == 0, st.describe()
    assert st.json["videos"]["indexed"] == 6
    # the stored paths compare equal to the ones discovery finds: a re-run changes nothing
    again = run_vidx(["index", "--db", str(db), "--model", "vidx-tiny", "--pretrained", "random", "--json",
                      "--no-progress", "--", str(folder), EXPLICIT], names_index["env"], cwd=names_index["other"])
    assert again.rc == 0, again.describe()
    assert (again.json["unchanged"], again.json["indexed"], again.json["deleted"]) == (6, 0, 0), again.json


def _run_without_weights(tmp_path, ray_tmp):
    make_video(tmp_path / "videos" / "a.mp4", f"testsrc2={SIZE}", 1.0)
    home = tmp_path / "home"
    env = cli_env(ray_tmp, HOME=str(home), HF_HOME=str(home / "hf"), XDG_CACHE_HOME=str(home / "cache"),
                  HF_HUB_OFFLINE="1")
    # the default model (ViT-B-32, laion2b_s34b_b79k): no --model/--pretrained
    return run_vidx(["index", str(tmp_path / "videos"), "--db", str(tmp_path / "index"), "--json",
                     "--no-progress"], env, timeout=180)


def test_missing_weights_exit_1_with_instructions(tmp_path, ray_tmp):
    res = _run_without_weights(tmp_path, ray_tmp)
    assert res.rc == 1, res.describe()
    assert "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("vidx: error:"), res.stderr
    assert "ViT-B-32" in res.stderr and "laion2b_s34b_b79k" in res.stderr
    assert "--pretrained" in res.stderr and "random" in res.stderr and "HF_HOME" in res.stderr, res.stderr
    assert res.stdout.strip() == ""
    assert res.wall_s < 60, f"took {res.wall_s:.1f} s to report missing weights"
    db = tmp_path / "index"
    if (db / "vidx.duckdb").exists():
        assert query(db, "SELECT count(*) FROM videos")[0][0] == 0


def test_missing_weights_fail_before_ray_starts(tmp_path, ray_tmp):
    res = _run_without_weights(tmp_path, ray_tmp)
    assert res.rc == 1, res.describe()
    assert "--pretrained" in res.stderr
    assert not ray_started(ray_tmp), f"Ray was started before the missing weights were reported ({res.wall_s:.1f} s)"
    assert res.wall_s < 20, f"took {res.wall_s:.1f} s to report missing weights"


def test_status_of_missing_index(tmp_path, ray_tmp):
    db = tmp_path / "no index here"
    for extra in ([], ["--json"]):
        res = run_vidx(["status", "--db", str(db), *extra], cli_env(ray_tmp), timeout=60)
        assert res.rc == 1, res.describe()
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, res.stderr
        assert "vidx index" in lines[0] and str(db) in lines[0], lines[0]
        assert res.stdout.strip() == ""
    assert not db.exists(), "status created the index directory"


def test_model_mixing_is_refused(names_index, tmp_path, ray_tmp):
    import open_clip
    import torch

    from indexer.model import _register_vidx_configs

    db = names_index["db"]
    _register_vidx_configs()
    torch.manual_seed(123)
    ckpt = tmp_path / "other-tiny.pt"
    torch.save(open_clip.create_model("vidx-tiny").state_dict(), ckpt)
    more = make_video(tmp_path / "more" / "new.mp4", f"testsrc2={SIZE}", 1.0)
    before = (sorted(videos(db)), sorted(vectors(db)), query(db, "SELECT value FROM meta WHERE key = 'model_id'"))

    res = run_vidx(index_args([more.parent], db, tiny=False) + ["--model", "vidx-tiny", "--pretrained", str(ckpt)],
                   cli_env(ray_tmp), timeout=120)
    assert res.rc == 1, res.describe()
    assert "cannot be mixed" in res.stderr, res.stderr
    assert "--reset" in res.stderr or "--db" in res.stderr
    assert "Traceback" not in res.stderr
    assert not ray_started(ray_tmp), "a refused run started Ray"
    after = (sorted(videos(db)), sorted(vectors(db)), query(db, "SELECT value FROM meta WHERE key = 'model_id'"))
    assert after == before, "the refused run changed the index"
    assert str(more) not in after[0]


def test_swapped_names_keep_both_videos(names_index):
    folder, db, env = names_index["folder"], names_index["db"], names_index["env"]
    x, y = folder / AWKWARD[0], folder / AWKWARD[1]
    before_clips, before_vecs = clips_by_path(db), vectors(db)
    vx = [before_vecs[c[0]] for c in before_clips[str(x)]]
    vy = [before_vecs[c[0]] for c in before_clips[str(y)]]
    tmp = folder / "swap.tmp"
    os.rename(x, tmp)
    os.rename(y, x)
    os.rename(tmp, y)

    res = run_vidx(index_args([folder], db), env)
    assert res.rc == 0, res.describe()
    rows = videos(db)
    assert rows.get(str(x), {}).get("status") == "indexed", f"{x.name} lost from the index: {res.json}"
    assert rows.get(str(y), {}).get("status") == "indexed", f"{y.name} lost from the index: {res.json}"
    after_clips, after_vecs = clips_by_path(db), vectors(db)
    # each path now holds the vectors of the content that moved there
    np.testing.assert_allclose([after_vecs[c[0]] for c in after_clips[str(x)]], vy, atol=1e-5)
    np.testing.assert_allclose([after_vecs[c[0]] for c in after_clips[str(y)]], vx, atol=1e-5)
    assert_index_consistent(db)


def test_byte_copy_reuses_vectors_without_duplicates(names_index, tmp_path, ray_tmp):
    db, src = names_index["db"], names_index["folder"] / "-dash.mp4"
    v1, c1, vec1 = videos(db), clips_by_path(db), vectors(db)
    copies = tmp_path / "copies"
    copies.mkdir()
    dst = copies / "dash copy.mp4"
    shutil.copyfile(src, dst)

    res = run_vidx(index_args([copies], db), cli_env(ray_tmp))
    assert res.rc == 0, res.describe()
    s = res.json
    assert (s["copied"], s["indexed"], s["deleted"], s["frames_embedded"]) == (1, 0, 0, 0), s
    assert not ray_started(ray_tmp), "a byte copy started Ray"
    v2, c2, vec2 = videos(db), clips_by_path(db), vectors(db)
    assert sorted(v2) == sorted(list(v1) + [str(dst)])
    # a new video with new clip ids, the same spans and identical vectors
    assert v2[str(dst)]["status"] == "indexed"
    assert v2[str(dst)]["video_id"] not in {r["video_id"] for r in v1.values()}
    copy_ids = [c[0] for c in c2[str(dst)]]
    assert copy_ids and min(copy_ids) > max(vec1), "the copy must get new clip ids"
    assert [c[1:] for c in c2[str(dst)]] == [c[1:] for c in c1[str(src)]]
    for a, b in zip([c[0] for c in c1[str(src)]], copy_ids):
        np.testing.assert_array_equal(vec2[b], vec1[a])
    assert c2[str(src)] == c1[str(src)], "the source changed"
    # the FAISS file holds every clip exactly once (the bug: the copy's ids are in it twice)
    ids = sorted(faiss_ids(db).tolist())
    assert ids == sorted(vec2), f"FAISS ids {ids} != DuckDB clip ids {sorted(vec2)}"
    assert_index_consistent(db)


def test_identical_files_in_one_run_are_decoded_once(tmp_path, ray_tmp):
    """An archive often holds the same file in several folders. On the first run each content is
    decoded and embedded once; the other copies get their own rows and clip ids with identical
    vectors (as a copy across runs does). An old video at a copy's path is replaced, not kept."""
    folder = tmp_path / "archive"
    a = make_video(folder / "a.mp4", "testsrc2=size=160x120:rate=25", 3.0)
    b = make_video(folder / "b.mp4", "smptebars=size=160x120:rate=25", 2.0)
    db = tmp_path / "db"
    stale = folder / "exports" / "a final.mp4"
    make_video(stale, "mandelbrot=size=160x120:rate=25", 2.0)
    first = run_vidx(index_args([folder], db, "--clip-s", "1"), cli_env(ray_tmp))
    assert first.rc == 0 and first.json["indexed"] == 3, first.describe()

    shutil.copyfile(a, stale)  # new content at an indexed path: a copy of a.mp4 ...
    for name in ("a copy.mp4", "again/a.mp4"):  # ... and two new copies of it
        (folder / name).parent.mkdir(exist_ok=True)
        shutil.copyfile(a, folder / name)
    new_a = make_video(folder / "c.mp4", "testsrc=size=160x120:rate=25", 2.0)
    shutil.copyfile(new_a, folder / "again" / "c.mp4")  # a copy of content new in this run
    frames_one_c = None

    res = run_vidx(index_args([folder], db, "--clip-s", "1"), cli_env(ray_tmp))
    assert res.rc == 0, res.describe()
    s = res.json
    assert (s["indexed"], s["copied"], s["deleted"], s["failed"]) == (1, 4, 1, 0), s
    frames_one_c = s["frames_embedded"]
    assert 0 < frames_one_c <= 2 * 3, s  # c.mp4 only: 2 clips of at most 3 snippets
    v, c, vec = videos(db), clips_by_path(db), vectors(db)
    assert len(v) == 7 and all(r["status"] == "indexed" for r in v.values())
    for copy in (stale, folder / "a copy.mp4", folder / "again" / "a.mp4"):
        assert [x[1:] for x in c[str(copy)]] == [x[1:] for x in c[str(a)]]
        for x, y in zip(c[str(a)], c[str(copy)]):
            np.testing.assert_array_equal(vec[x[0]], vec[y[0]])
    assert [x[1:] for x in c[str(folder / "again" / "c.mp4")]] == [x[1:] for x in c[str(new_a)]]
    assert len({x[0] for rows in c.values() for x in rows}) == sum(len(rows) for rows in c.values())
    assert_index_consistent(db)
    again = run_vidx(index_args([folder], db, "--clip-s", "1"), cli_env(ray_tmp))
    assert (again.json["indexed"], again.json["unchanged"], again.json["copied"]) == (0, 7, 0), again.describe()
