"""Files whose names are not UTF-8 (Latin-1 names from older systems, on archives that are often
read-only) are indexed, found, re-run, renamed, exported and scanned like any other file.

Python reads such a name with each undecodable byte as a lone surrogate; DuckDB stores UTF-8 only,
so the store maps those bytes (indexer.pathtext). These tests go through every way a path leaves
the index: the incremental plan, search and its filters, --like, the CLI's text and JSON, scene
exports and a moderation scan.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import make_video
from indexer.pathtext import display_path
from test_cli_support import assert_index_consistent, cli_env, index_args, query, ray_tmp, run_vidx  # noqa: F401


def fs(folder, name: bytes) -> str:
    """The path Python gives for the raw file name ``name`` in ``folder``."""
    return os.fsdecode(os.path.join(os.fsencode(str(folder)), name))


@pytest.fixture
def local_executor(monkeypatch):
    import pipelines.index as index_module
    from pipelines.local import index_with_local

    monkeypatch.setattr(index_module, "_index_with_ray", index_with_local)


@pytest.fixture
def latin1_archive(video_dir):
    """An ordinary file, a Latin-1 file, and a Latin-1 folder holding a file."""
    make_video(video_dir / "plain.mp4", "testsrc2=size=160x120:rate=25", duration_s=3)
    cafe = fs(video_dir, b"caf\xe9.mp4")
    make_video(video_dir / "tmp1.mp4", "smptebars=size=160x120:rate=25", duration_s=4)
    os.rename(video_dir / "tmp1.mp4", cafe)
    folder = fs(video_dir, b"d\xe9j\xe0 vu")
    os.mkdir(folder)
    inner = fs(folder, b"cr\xe8me 'br\xfbl\xe9e'.mp4")
    make_video(video_dir / "tmp2.mp4", "mandelbrot=size=160x120:rate=25", duration_s=3)
    os.rename(video_dir / "tmp2.mp4", inner)
    return {"dir": video_dir, "plain": str(video_dir / "plain.mp4"), "cafe": cafe, "folder": folder,
            "inner": inner}


def test_latin1_names_are_indexed_searched_renamed_and_deleted(local_executor, latin1_archive, tiny_settings,
                                                                index_dir):
    from pipelines.index import index_paths
    from search.searcher import Filters, Searcher

    a = latin1_archive
    settings = dataclasses.replace(tiny_settings, tags=False)
    s = index_paths([str(a["dir"])], settings, show_progress=False)
    assert (s.status, s.indexed, s.failed) == ("ok", 3, 0), s.failures
    assert_index_consistent(index_dir)

    searcher = Searcher(str(index_dir))
    hits = searcher.search("a test pattern", k=10, per_video=1)
    assert {h.path for h in hits} == {a["plain"], a["cafe"], a["inner"]}  # the very names on disk
    assert all(os.path.exists(h.path) for h in hits)
    under = searcher.search("a test pattern", k=10, filters=Filters(path_prefix=a["folder"]))
    assert {h.path for h in under} == {a["inner"]}
    glob = searcher.search("a test pattern", k=10, filters=Filters(path_glob="*/caf\udce9.mp4"))
    assert {h.path for h in glob} == {a["cafe"]}
    like = searcher.search_like(a["cafe"], 1.0, k=10, include_source=True)
    assert like[0].path == a["cafe"]

    again = index_paths([str(a["dir"])], settings, show_progress=False)
    assert (again.indexed, again.unchanged, again.failed) == (0, 3, 0)  # matched by path, not re-decoded

    # A rename to another Latin-1 name keeps the vectors (found by content fingerprint).
    before = query(index_dir, "SELECT v.vector FROM clip_vectors v JOIN clips c USING (clip_id) "
                              "JOIN videos d USING (video_id) WHERE d.path LIKE '%caf%' ORDER BY c.idx")
    renamed = fs(a["dir"], b"caf\xe8 (copie).mp4")
    os.rename(a["cafe"], renamed)
    moved = index_paths([str(a["dir"])], settings, show_progress=False)
    assert (moved.indexed, moved.renamed, moved.frames_embedded) == (0, 1, 0)
    after = query(index_dir, "SELECT v.vector FROM clip_vectors v JOIN clips c USING (clip_id) "
                             "JOIN videos d USING (video_id) WHERE d.path LIKE '%caf%' ORDER BY c.idx")
    assert np.array_equal(np.array([r[0] for r in before]), np.array([r[0] for r in after]))
    searcher = Searcher(str(index_dir))
    assert renamed in {h.path for h in searcher.search("a test pattern", k=10, per_video=1)}

    os.remove(a["inner"])
    gone = index_paths([str(a["dir"])], settings, show_progress=False)
    assert gone.deleted == 1
    assert a["inner"] not in {h.path for h in Searcher(str(index_dir)).search("a test pattern", k=10)}
    assert_index_consistent(index_dir)


def test_a_decomposed_name_is_found_by_its_composed_spelling(local_executor, video_dir, tiny_settings, index_dir):
    """Names written on macOS are often decomposed (NFD: "e" + a combining accent); a keyboard
    types the composed character (NFC). Both name the same file to a person, so lookups of a
    named file or folder accept either."""
    import unicodedata

    from indexer import exports
    from indexer.store import IndexStore
    from pipelines.index import index_paths
    from search.searcher import Filters, Searcher

    folder = video_dir / unicodedata.normalize("NFD", "Caf\u00e9 d\u00e9j\u00e0")
    make_video(folder / unicodedata.normalize("NFD", "cr\u00e8me.mp4"), duration_s=3)
    make_video(video_dir / "other.mp4", "smptebars=size=160x120:rate=25", duration_s=3)
    s = index_paths([str(video_dir)], dataclasses.replace(tiny_settings, tags=False), show_progress=False)
    assert s.indexed == 2
    typed_folder = str(video_dir / "Caf\u00e9 d\u00e9j\u00e0")  # NFC, as typed
    stored = str(folder / unicodedata.normalize("NFD", "cr\u00e8me.mp4"))
    searcher = Searcher(str(index_dir))
    hits = searcher.search("a test pattern", k=5, filters=Filters(path_prefix=typed_folder))
    assert [h.path for h in hits] == [stored]
    assert searcher.search_like(typed_folder + "/cr\u00e8me.mp4", 1.0, k=1, include_source=True)[0].path == stored
    with IndexStore(str(index_dir), read_only=True) as store:
        assert exports.load_scenes(store.con, "cr\u00e8me.mp4").path == stored


def test_a_name_holding_the_mapping_characters_is_reported_not_stored(local_executor, latin1_archive,
                                                                      tiny_settings):
    from indexer.pathtext import UNSTORABLE_NAME
    from pipelines.index import index_paths

    odd = os.path.join(str(latin1_archive["dir"]), "odd \U000F00E9.mp4")
    shutil.copy(latin1_archive["plain"], odd)
    s = index_paths([str(latin1_archive["dir"])], dataclasses.replace(tiny_settings, tags=False),
                    show_progress=False)
    assert (s.indexed, s.failed) == (3, 1)
    assert s.failures == [{"path": odd, "status": "failed", "reason": UNSTORABLE_NAME}]


def test_cli_prints_latin1_paths_in_text_json_scenes_and_moderation(latin1_archive, index_dir, ray_tmp,  # noqa: F811
                                                                    tmp_path):
    """Through the CLI (Ray executor): no encoding error anywhere a path is printed or written."""
    a = latin1_archive
    bad = fs(a["dir"], b"ab\xeeme.avi")
    with open(bad, "wb") as fh:
        fh.write(b"<html>not a video</html>")
    env = cli_env(ray_tmp)
    r = run_vidx(index_args([a["dir"]], index_dir, "--no-tags"), env)
    assert r.rc == 0, r.stderr
    assert (r.json["indexed"], r.json["failed"]) == (3, 1)
    assert r.json["failures"][0]["path"] == bad
    r = run_vidx(index_args([a["folder"]], index_dir, "--no-tags"), env)  # a Latin-1 root on the command line
    assert r.rc == 0, r.stderr
    assert (r.json["unchanged"], r.json["deleted"]) == (1, 0)
    r = run_vidx(["status", "--db", str(index_dir)], env)
    assert r.rc == 0, r.stderr
    assert "ab\\xeeme.avi" in r.stdout
    r = run_vidx(["status", "--db", str(index_dir), "--json"], env)
    assert [f["path"] for f in r.json["failures"]] == [bad]

    r = run_vidx(["search", "a test pattern", "--db", str(index_dir), "--json", "-k", "10"], env)
    assert r.rc == 0, r.stderr
    paths = {h["path"] for h in json.loads(r.stdout)}  # surrogates travel as \udcNN escapes
    assert paths == {a["plain"], a["cafe"], a["inner"]}
    play = next(h["play"] for h in json.loads(r.stdout) if h["path"] == a["cafe"])
    assert "caf$'\\xe9'.mp4" in play

    r = run_vidx(["search", "a test pattern", "--db", str(index_dir), "-k", "10"], env)
    assert r.rc == 0, r.stderr
    assert "caf\\xe9.mp4" in r.stdout and "cr\\xe8me 'br\\xfbl\\xe9e'.mp4" in r.stdout
    word = next(line.split("-autoexit ", 1)[1] for line in r.stdout.splitlines() if "caf$" in line)
    assert subprocess.run(["bash", "-c", f"test -f {word}"]).returncode == 0  # the command names the file

    # What vidx printed, pasted back as an argument, names the same file or folder.
    printed = display_path(a["cafe"])
    r = run_vidx(["search", "--like", f"{printed}@1.0", "--db", str(index_dir), "--json", "-k", "1",
                  "--under", display_path(a["folder"])], env)
    assert r.rc == 0, r.stderr
    assert [h["path"] for h in r.json] == [a["inner"]]
    r = run_vidx(["scenes", printed, "--db", str(index_dir), "--json", "--no-thumbnails"], env)
    assert r.rc == 0, r.stderr
    assert r.json["path"] == a["cafe"]

    cafe_name = os.path.basename(a["cafe"])
    for fmt in ("edl", "otio", "csv", "json"):
        out = tmp_path / f"scenes.{fmt}"
        r = run_vidx(["scenes", cafe_name, "--db", str(index_dir), "-o", str(out), "--no-thumbnails"], env)
        assert r.rc == 0, (fmt, r.stderr)
        assert out.stat().st_size > 0
    otio_doc = json.loads((tmp_path / "scenes.otio").read_text())
    assert "caf%E9.mp4" in json.dumps(otio_doc)  # the exact file, percent-encoded in target_url

    policy = tmp_path / "policy.toml"
    policy.write_text('name = "t"\n[categories.anything]\nthreshold = 0.0\n'
                      'positives = ["a test pattern"]\nnegatives = ["nothing"]\n')
    report = tmp_path / "report.html"
    r = run_vidx(["moderate", a["folder"], "--db", str(index_dir), "--policy", str(policy), "--no-nudenet",
                  "--report", str(report), "--json"], env)
    assert r.rc in (0, 1), r.stderr
    scan = json.loads(r.stdout)
    assert scan["new_flags"] >= 1 and {f["path"] for f in scan["flags"]} == {a["inner"]}
    assert "cr\\xe8me" in report.read_text()
    r = run_vidx(["moderate", display_path(a["folder"]), "--db", str(index_dir), "--policy", str(policy),
                  "--no-nudenet", "--rescan", "--json"], env)  # the folder as vidx printed it: same scope
    assert r.rc in (0, 1), r.stderr
    assert r.json["clips_in_scope"] == scan["clips_in_scope"] >= 1
