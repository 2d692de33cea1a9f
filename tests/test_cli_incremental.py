"""Incremental indexing through the CLI: touch, rename/move, delete, modify.

Only a content change may cost decoding and embedding; a touch, a rename/move, a copy or a
delete is applied from the index itself (no Ray, no model), and clip ids of unchanged content
never change, so that FAISS ids stay stable. (Byte copies and swapped names: test_cli_misc.py.)
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from conftest import make_video
from test_cli_support import (assert_index_consistent, cli_env, clips_by_path, faiss_ids, index_args,
                              query, ray_started, ray_tmp, run_vidx, vectors, videos)  # noqa: F401

SIZE = "size=160x120:rate=25"


def _fresh(ray_tmp):
    shutil.rmtree(ray_tmp, ignore_errors=True)
    ray_tmp.mkdir()


def _ids(clips):
    return [c[0] for c in clips]


def test_touch_move_delete_modify(video_dir, index_dir, ray_tmp):
    a = make_video(video_dir / "a.mp4", f"testsrc2={SIZE}", 3.0)
    b = make_video(video_dir / "b.mp4", f"smptebars={SIZE}", 2.0)
    c = make_video(video_dir / "c.mp4", f"mandelbrot={SIZE}", 4.0)
    d = make_video(video_dir / "d.mp4", f"testsrc={SIZE}", 3.0)
    env = cli_env(ray_tmp)
    args = index_args([video_dir], index_dir, "--clip-s", "1")

    # -- first run --------------------------------------------------------------------------------
    r1 = run_vidx(args, env)
    assert r1.rc == 0, r1.describe()
    s1 = r1.json
    assert (s1["indexed"], s1["failed"], s1["clips_added"]) == (4, 0, 3 + 2 + 4 + 3)
    assert_index_consistent(index_dir)
    v1, c1, vec1 = videos(index_dir), clips_by_path(index_dir), vectors(index_dir)
    assert [len(c1[str(p)]) for p in (a, b, c, d)] == [3, 2, 4, 3]
    all_ids_1 = set(vec1)

    # -- touch: new mtime, same bytes -> unchanged, nothing re-embedded ---------------------------
    st = os.stat(a)
    new_mtime = st.st_mtime_ns + 7_000_000_000
    os.utime(a, ns=(new_mtime, new_mtime))
    _fresh(ray_tmp)
    r2 = run_vidx(args, env)
    assert r2.rc == 0, r2.describe()
    s2 = r2.json
    assert (s2["indexed"], s2["unchanged"], s2["touched"], s2["frames_embedded"], s2["clips_added"]) == \
        (0, 4, 1, 0, 0)
    assert not ray_started(ray_tmp), "a touch started Ray"
    v2 = videos(index_dir)
    assert v2[str(a)]["video_id"] == v1[str(a)]["video_id"]
    assert v2[str(a)]["mtime_ns"] == new_mtime, "the touched file's new mtime was not recorded"
    assert clips_by_path(index_dir) == c1, "a touch changed clips"
    assert set(vectors(index_dir)) == all_ids_1
    assert_index_consistent(index_dir)

    # -- delete c, move d into a subfolder under a new name -----------------------------------------
    os.remove(c)
    moved = video_dir / "sub dir" / "d moved.mp4"
    moved.parent.mkdir()
    os.rename(d, moved)
    _fresh(ray_tmp)
    r3 = run_vidx(args, env)
    assert r3.rc == 0, r3.describe()
    s3 = r3.json
    assert (s3["deleted"], s3["renamed"], s3["copied"], s3["indexed"], s3["unchanged"], s3["frames_embedded"]) \
        == (1, 1, 0, 0, 2, 0), s3
    assert not ray_started(ray_tmp), "delete/move started Ray"
    assert_index_consistent(index_dir)
    v3, c3, vec3 = videos(index_dir), clips_by_path(index_dir), vectors(index_dir)
    assert sorted(v3) == sorted(map(str, (a, b, moved)))
    # deleted: gone from every table and from FAISS
    gone = set(_ids(c1[str(c)]))
    assert not gone & set(vec3), "deleted video's vectors still in clip_vectors"
    assert not gone & set(faiss_ids(index_dir).tolist()), "deleted video's clips still in FAISS"
    assert query(index_dir, "SELECT count(*) FROM video_vectors WHERE video_id = ?",
                 [v1[str(c)]["video_id"]])[0][0] == 0
    # moved: same video, same clip ids and vectors, new path
    assert v3[str(moved)]["video_id"] == v1[str(d)]["video_id"]
    assert c3[str(moved)] == c1[str(d)], "a move changed clip ids or spans"
    for cid in _ids(c1[str(d)]):
        np.testing.assert_array_equal(vec3[cid], vec1[cid])
    assert c3[str(a)] == c1[str(a)] and c3[str(b)] == c1[str(b)]

    # -- modify b (different content, same path) -> re-indexed, old clips gone everywhere ----------
    make_video(b, f"rgbtestsrc={SIZE}", 3.0)
    _fresh(ray_tmp)
    r4 = run_vidx(args, env)
    assert r4.rc == 0, r4.describe()
    s4 = r4.json
    assert (s4["indexed"], s4["unchanged"], s4["clips_added"], s4["deleted"], s4["copied"], s4["renamed"]) == \
        (1, 2, 3, 0, 0, 0), s4
    assert_index_consistent(index_dir)
    v4, c4, vec4 = videos(index_dir), clips_by_path(index_dir), vectors(index_dir)
    assert sorted(v4) == sorted(map(str, (a, b, moved)))
    assert abs(v4[str(b)]["duration_s"] - 3.0) < 0.05 and len(c4[str(b)]) == 3
    old_b = set(_ids(c1[str(b)]))
    new_b = set(_ids(c4[str(b)]))
    assert not old_b & set(vec4), "old clips of the modified video still in clip_vectors"
    assert not old_b & set(faiss_ids(index_dir).tolist()), "old clips of the modified video still in FAISS"
    assert not old_b & {c[0] for cl in c4.values() for c in cl}
    assert min(new_b) > max(set(vec3)), "clip ids were reused"
    assert v4[str(b)]["fingerprint"] != v1[str(b)]["fingerprint"]
    assert not np.allclose(vec4[min(new_b)], vec1[min(old_b)]), "new content, same vector?"
    for p in (a, moved):
        assert c4[str(p)] == c3[str(p)], f"{p.name} was re-indexed"
