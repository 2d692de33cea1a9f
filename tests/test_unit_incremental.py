"""Unit tests for indexer.incremental.plan_work: what a run must do given the disk and the index."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.discover import discover_files, fingerprint_file
from indexer.incremental import plan_work
from indexer.store import IndexParams, IndexStore, StoredVideo
from indexer.types import ClipEmbedding, ClipSpan, VideoFile, VideoResult, VideoStatus

WANTED = IndexParams("m|random:0", 2.0, 3, "exact")


class Disk:
    """Files on disk plus a hand-made index of them."""

    def __init__(self, root: Path):
        self.root = root
        self.stored: list[StoredVideo] = []
        self.params: dict[int, IndexParams] = {}
        self._next = 1

    def write(self, rel: str, data: bytes, mtime_ns: int | None = None) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if mtime_ns is not None:
            os.utime(p, ns=(mtime_ns, mtime_ns))
        return p

    def index(self, path: Path | str, status: str = "indexed", params: IndexParams = WANTED,
              fingerprint: str | None = None, size: int | None = None, mtime_ns: int | None = None
              ) -> StoredVideo:
        path = str(path)
        st = os.stat(path) if os.path.exists(path) else None
        s = StoredVideo(video_id=self._next, path=path,
                        fingerprint=fingerprint or fingerprint_file(path),
                        size_bytes=size if size is not None else st.st_size,
                        mtime_ns=mtime_ns if mtime_ns is not None else st.st_mtime_ns, status=status)
        self._next += 1
        self.stored.append(s)
        if status == "indexed":
            self.params[s.video_id] = params
        return s

    def plan(self, roots=None, wanted=WANTED, retry_failed=False, files=None):
        roots = [str(self.root)] if roots is None else [str(r) for r in roots]
        files = list(discover_files(roots)) if files is None else files
        return plan_work(files, self.stored, self.params, wanted, roots, retry_failed)


@pytest.fixture
def disk(tmp_path) -> Disk:
    root = tmp_path / "videos"
    root.mkdir()
    return Disk(root)


def vf(path: Path) -> VideoFile:
    st = os.stat(path)
    return VideoFile(str(path), st.st_size, st.st_mtime_ns)


def summary(plan) -> dict:
    return {
        "unchanged": sorted(s.path for s in plan.unchanged),
        "touched": sorted((vid, f.path) for vid, f in plan.touched),
        "renamed": sorted((vid, f.path, old) for vid, f, old in plan.renamed),
        "copies": sorted((vid, f.path) for vid, f in plan.copies),
        "to_index": sorted(f.path for f, _ in plan.to_index),
        "deleted": sorted(s.path for s in plan.deleted),
        "unreadable": sorted(f.path for f, _ in plan.unreadable),
        "duplicates": sorted(f.path for f in plan.duplicates),
    }


EMPTY = {"unchanged": [], "touched": [], "renamed": [], "copies": [], "to_index": [], "deleted": [],
         "unreadable": [], "duplicates": []}


def expect(**kw) -> dict:
    return {**EMPTY, **kw}


# -- the cases ------------------------------------------------------------------------------------

def test_new_files_are_indexed_with_fingerprint(disk):
    a = disk.write("a.mp4", b"A" * 100)
    b = disk.write("sub/b.mkv", b"B" * 200)
    plan = disk.plan()
    assert summary(plan) == expect(to_index=sorted([str(a), str(b)]))
    fps = dict((f.path, fp) for f, fp in plan.to_index)
    assert fps[str(a)] == fingerprint_file(str(a))
    assert plan.has_changes


def test_unchanged_same_stat_costs_no_fingerprint(disk, monkeypatch):
    a = disk.write("a.mp4", b"A" * 100)
    disk.index(a)
    import indexer.incremental as inc

    monkeypatch.setattr(inc, "fingerprint_file", lambda *a, **k: pytest.fail("fingerprinted an unchanged file"))
    plan = disk.plan()
    assert summary(plan) == expect(unchanged=[str(a)])
    assert not plan.has_changes


def test_touched_same_content_new_mtime(disk):
    a = disk.write("a.mp4", b"A" * 100, mtime_ns=1_000_000_000_000_000_000)
    s = disk.index(a)
    os.utime(a, ns=(1_100_000_000_000_000_000, 1_100_000_000_000_000_000))
    plan = disk.plan()
    assert summary(plan) == expect(unchanged=[str(a)], touched=[(s.video_id, str(a))])
    assert plan.touched[0][1].mtime_ns == 1_100_000_000_000_000_000
    assert plan.has_changes  # the new mtime must be written


def test_changed_content_same_path_is_reindexed(disk):
    a = disk.write("a.mp4", b"A" * 100, mtime_ns=1_000_000_000_000_000_000)
    disk.index(a)
    disk.write("a.mp4", b"A" * 50 + b"Z" + b"A" * 49, mtime_ns=1_000_000_000_000_000_000 + 1)
    plan = disk.plan()
    assert summary(plan) == expect(to_index=[str(a)])
    assert plan.to_index[0][1] == fingerprint_file(str(a))
    assert plan.to_index[0][1] != disk.stored[0].fingerprint


def test_changed_content_same_stat_is_not_noticed(disk):
    """Documented trade-off: same size and mtime means unchanged (one stat per file)."""
    a = disk.write("a.mp4", b"A" * 100, mtime_ns=1_000_000_000_000_000_000)
    disk.index(a)
    disk.write("a.mp4", b"B" * 100, mtime_ns=1_000_000_000_000_000_000)
    assert summary(disk.plan()) == expect(unchanged=[str(a)])


def test_rename(disk):
    old = disk.write("old.mp4", b"content" * 30)
    s = disk.index(old)
    new = disk.root / "moved" / "new.mp4"
    new.parent.mkdir()
    os.rename(old, new)
    plan = disk.plan()
    assert summary(plan) == expect(renamed=[(s.video_id, str(new), str(old))])
    assert plan.has_changes


def test_copy(disk):
    a = disk.write("a.mp4", b"content" * 30)
    s = disk.index(a)
    b = disk.root / "b.mp4"
    shutil.copyfile(a, b)
    plan = disk.plan()
    assert summary(plan) == expect(unchanged=[str(a)], copies=[(s.video_id, str(b))])


def test_rename_preferred_over_copy_when_one_source_vanished(disk):
    a = disk.write("a.mp4", b"same" * 40)
    gone = disk.write("gone.mp4", b"same" * 40)
    sa = disk.index(a)
    sg = disk.index(gone)
    new = disk.write("zz_new.mp4", b"same" * 40)
    os.remove(gone)
    plan = disk.plan()
    assert plan.renamed == [(sg.video_id, vf(new), str(gone))]
    assert plan.copies == []
    assert [s.video_id for s in plan.unchanged] == [sa.video_id]
    assert plan.deleted == []  # the renamed video is not also deleted


def test_two_new_copies_of_a_moved_file(disk):
    gone = disk.write("gone.mp4", b"same" * 40)
    s = disk.index(gone)
    os.remove(gone)
    x = disk.write("x.mp4", b"same" * 40)
    y = disk.write("y.mp4", b"same" * 40)
    plan = disk.plan()
    # one of them takes over the stored video (rename), the other clones it
    assert summary(plan) == expect(renamed=[(s.video_id, str(x), str(gone))], copies=[(s.video_id, str(y))])


def test_new_content_at_path_that_matches_another_vanished_file(disk):
    a = disk.write("a.mp4", b"old a content" * 10, mtime_ns=1_000_000_000_000_000_000)
    b = disk.write("b.mp4", b"b content" * 10)
    sa = disk.index(a)
    sb = disk.index(b)
    os.replace(b, a)  # mv b.mp4 a.mp4: b's content now lives at a's path
    plan = disk.plan()
    assert summary(plan) == expect(renamed=[(sb.video_id, str(a), str(b))], deleted=[str(a)])
    assert plan.deleted == [sa]


def test_deleted_under_roots_only(disk, tmp_path):
    a = disk.write("a.mp4", b"A" * 10)
    gone = disk.write("gone.mp4", b"G" * 10)
    disk.index(a)
    disk.index(gone)
    os.remove(gone)
    elsewhere = tmp_path / "other_root" / "kept.mp4"  # indexed by an earlier run with another root
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"K" * 10)
    disk.index(elsewhere)
    os.remove(elsewhere)  # even gone from disk: not under this run's roots, so left alone
    sibling = str(disk.root) + "_sibling/x.mp4"  # shares the root's name as a prefix only
    disk.index(sibling, fingerprint="fp-sibling", size=1, mtime_ns=1)
    plan = disk.plan()
    assert summary(plan) == expect(unchanged=[str(a)], deleted=[str(gone)])


def test_stored_file_still_on_disk_but_not_discovered_is_kept(disk):
    hidden = disk.write(".hidden/a.mp4", b"H" * 10)
    disk.index(hidden)  # indexed by a run with include_hidden
    plan = disk.plan()  # this run skips hidden entries
    assert summary(plan) == EMPTY
    assert not plan.has_changes


def test_deleted_when_root_is_a_file(disk):
    gone = disk.write("gone.mp4", b"G" * 10)
    disk.index(gone)
    os.remove(gone)
    keep = disk.write("keep.mp4", b"K" * 10)
    plan = disk.plan(roots=[keep])
    assert summary(plan) == expect(to_index=[str(keep)])  # gone.mp4 is not under the root keep.mp4


def test_params_change_reindexes(disk):
    a = disk.write("a.mp4", b"A" * 10)
    b = disk.write("b.mp4", b"B" * 10)
    disk.index(a)
    disk.index(b)
    for wanted in (IndexParams(WANTED.model_id, 5.0, 3, "exact"), IndexParams(WANTED.model_id, 2.0, 4, "exact"),
                   IndexParams(WANTED.model_id, 2.0, 3, "keyframe"), IndexParams("other", 2.0, 3, "exact")):
        plan = disk.plan(wanted=wanted)
        assert summary(plan) == expect(to_index=[str(a), str(b)]), wanted


def test_params_change_only_for_some(disk):
    a = disk.write("a.mp4", b"A" * 10)
    b = disk.write("b.mp4", b"B" * 10)
    disk.index(a, params=IndexParams(WANTED.model_id, 5.0, 3, "exact"))
    disk.index(b)
    assert summary(disk.plan()) == expect(unchanged=[str(b)], to_index=[str(a)])


def test_copy_of_video_with_old_params_is_indexed_not_cloned(disk):
    a = disk.write("a.mp4", b"A" * 10)
    disk.index(a, params=IndexParams(WANTED.model_id, 5.0, 3, "exact"))
    b = disk.root / "b.mp4"
    shutil.copyfile(a, b)
    # a is indexed again (new params); b, the same content, is copied from it afterwards
    assert summary(disk.plan()) == expect(to_index=[str(a)], duplicates=[str(b)])


def test_touched_with_params_change(disk):
    a = disk.write("a.mp4", b"A" * 10, mtime_ns=10**18)
    s = disk.index(a, params=IndexParams(WANTED.model_id, 5.0, 3, "exact"))
    os.utime(a, ns=(2 * 10**18, 2 * 10**18))
    plan = disk.plan()
    assert summary(plan) == expect(touched=[(s.video_id, str(a))], to_index=[str(a)])


@pytest.mark.parametrize("status", ["failed", "skipped"])
def test_failed_not_retried_unless_asked(disk, status):
    bad = disk.write("bad.avi", b"<!DOCTYPE html>")
    disk.index(bad, status=status)
    assert summary(disk.plan()) == expect(unchanged=[str(bad)])
    assert summary(disk.plan(retry_failed=True)) == expect(to_index=[str(bad)])


def test_failed_file_touched_not_retried(disk):
    bad = disk.write("bad.avi", b"junk", mtime_ns=10**18)
    s = disk.index(bad, status="failed")
    os.utime(bad, ns=(2 * 10**18, 2 * 10**18))
    assert summary(disk.plan()) == expect(unchanged=[str(bad)], touched=[(s.video_id, str(bad))])


def test_failed_file_changed_is_retried(disk):
    bad = disk.write("bad.mp4", b"partial download", mtime_ns=10**18)
    disk.index(bad, status="failed")
    disk.write("bad.mp4", b"complete download now", mtime_ns=2 * 10**18)
    assert summary(disk.plan()) == expect(to_index=[str(bad)])


def test_copy_of_failed_file_is_not_cloned(disk):
    bad = disk.write("bad.avi", b"junk")
    disk.index(bad, status="failed")
    copy = disk.root / "copy.avi"
    shutil.copyfile(bad, copy)
    assert summary(disk.plan()) == expect(unchanged=[str(bad)], to_index=[str(copy)])


def test_unreadable_file(disk, monkeypatch):
    a = disk.write("a.mp4", b"A" * 10)
    b = disk.write("b.mp4", b"B" * 10)
    import indexer.incremental as inc

    real = inc.fingerprint_file

    def fingerprint(path, size=None):
        if path == str(a):  # chmod 000 does not stop root, so fail the read directly
            raise PermissionError(13, "Permission denied", path)
        return real(path, size)

    monkeypatch.setattr(inc, "fingerprint_file", fingerprint)
    plan = disk.plan()
    assert summary(plan) == expect(unreadable=[str(a)], to_index=[str(b)])
    assert plan.unreadable[0][1] == "cannot read file: Permission denied"


def test_file_vanishing_between_discovery_and_plan_is_unreadable(disk):
    a = disk.write("a.mp4", b"A" * 10)
    files = list(discover_files([str(disk.root)]))
    os.remove(a)
    plan = disk.plan(files=files)
    assert summary(plan) == expect(unreadable=[str(a)])


# -- with a real store ---------------------------------------------------------------------------

def test_plan_against_store_round_trip(disk, index_dir):
    """Values read back from DuckDB compare equal to the wanted params: no spurious re-index."""
    a = disk.write("a.mp4", b"A" * 100)
    b = disk.write("b.mp4", b"B" * 100)
    rng = np.random.default_rng(0)
    results = []
    for p in (a, b):
        v = rng.normal(size=4).astype(np.float32)
        v /= np.linalg.norm(v)
        results.append(VideoResult(file=vf(p), fingerprint=fingerprint_file(str(p)), status=VideoStatus.INDEXED,
                                   clips=(ClipEmbedding(ClipSpan(0, 0.0, 1.0), v, (0.5,)),)))
    with IndexStore(str(index_dir)) as store:
        store.register_model(WANTED.model_id, "m", "random", 4, 32, 1.0)
        store.commit_results(results, WANTED, 1)
        roots = [str(disk.root)]
        plan = plan_work(discover_files(roots), store.stored_videos(), store.video_params(), WANTED, roots)
        assert summary(plan) == expect(unchanged=[str(a), str(b)])
        os.rename(b, disk.root / "c.mp4")
        plan = plan_work(discover_files(roots), store.stored_videos(), store.video_params(), WANTED, roots)
        (vid_b,) = [s.video_id for s in store.stored_videos() if s.path == str(b)]
        assert summary(plan) == expect(unchanged=[str(a)],
                                       renamed=[(vid_b, str(disk.root / "c.mp4"), str(b))])
        changed = IndexParams(WANTED.model_id, 3.0, 3, "exact")
        plan = plan_work(discover_files(roots), store.stored_videos(), store.video_params(), changed, roots)
        assert sorted(f.path for f, _ in plan.to_index) == [str(a), str(disk.root / "c.mp4")]


def test_new_content_twice_in_one_run_is_indexed_once(disk):
    """Identical new files: one is decoded, the others wait as duplicates (copied after it is
    indexed); content already indexed is still a plain copy; different content is not a duplicate."""
    a = disk.write("a.mp4", b"A" * 5000)
    disk.write("b/a again.mp4", b"A" * 5000)
    disk.write("c/a third.mp4", b"A" * 5000)
    disk.write("other.mp4", b"B" * 5000)
    plan = disk.plan()
    assert len(plan.to_index) == 2 and len(plan.duplicates) == 2
    kept = {f.path for f, _ in plan.to_index}
    assert str(disk.root / "other.mp4") in kept
    assert len(kept | {f.path for f in plan.duplicates}) == 4
    assert not plan.copies
    # once one copy of A is in the index, the rest are plain copies of it
    disk.index(a)
    again = disk.plan()
    assert {f.path for f, _ in again.to_index} == {str(disk.root / "other.mp4")}
    assert sorted(f.path for _, f in again.copies) == sorted([str(disk.root / "b/a again.mp4"),
                                                             str(disk.root / "c/a third.mp4")])
    assert not again.duplicates
