"""Deciding what a run must do: the diff between the folders on disk and the index.

Unchanged files (same path, size and mtime, same clip settings) cost one
``stat`` and nothing else. A file whose stat changed is fingerprinted: same
content means a touch; content already in the index under a path that no
longer exists means a rename or move (vectors kept); content that exists
under another live path means a copy (vectors cloned). New content that appears
more than once in one run is decoded once: the other files are ``duplicates``,
copied from it once it is indexed. Files in the scanned folders that are gone
from disk are deleted from the index.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from indexer.discover import fingerprint_file
from indexer.pathtext import UNSTORABLE_NAME, is_storable_path
from indexer.store import IndexParams, StoredVideo
from indexer.types import VideoFile


@dataclass
class WorkPlan:
    unchanged: list[StoredVideo] = field(default_factory=list)
    touched: list[tuple[int, VideoFile]] = field(default_factory=list)  # same content, new stat
    renamed: list[tuple[int, VideoFile, str]] = field(default_factory=list)  # (id, new file, old path)
    copies: list[tuple[int, VideoFile]] = field(default_factory=list)  # (source id, new file)
    to_index: list[tuple[VideoFile, str]] = field(default_factory=list)  # (file, fingerprint)
    # New files with the same content as a file in to_index: copied from it after it is indexed.
    duplicates: list[VideoFile] = field(default_factory=list)
    deleted: list[StoredVideo] = field(default_factory=list)
    unreadable: list[tuple[VideoFile, str]] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return bool(self.touched or self.renamed or self.copies or self.to_index or self.deleted)


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def plan_work(files: Iterable[VideoFile], stored: list[StoredVideo], params: dict[int, IndexParams],
              wanted: IndexParams, roots: list[str], retry_failed: bool = False) -> WorkPlan:
    plan = WorkPlan()
    by_path = {s.path: s for s in stored}
    by_fp: dict[str, list[StoredVideo]] = defaultdict(list)
    for s in stored:
        by_fp[s.fingerprint].append(s)
    seen: set[str] = set()
    claimed: set[int] = set()  # stored videos already matched by a rename
    planned: set[str] = set()  # fingerprints in plan.to_index

    def index(f: VideoFile, fp: str) -> None:
        plan.to_index.append((f, fp))
        planned.add(fp)

    def needs_reindex(s: StoredVideo) -> bool:
        if s.status == "indexed":
            p = params.get(s.video_id)
            return p is None or p != wanted
        return retry_failed

    for f in files:
        seen.add(f.path)
        if not is_storable_path(f.path):
            plan.unreadable.append((f, UNSTORABLE_NAME))
            continue
        s = by_path.get(f.path)
        if s and s.size_bytes == f.size_bytes and s.mtime_ns == f.mtime_ns:
            if needs_reindex(s):
                index(f, s.fingerprint)
            else:
                plan.unchanged.append(s)
            continue
        try:
            fp = fingerprint_file(f.path, f.size_bytes)
        except OSError as exc:
            plan.unreadable.append((f, f"cannot read file: {exc.strerror}"))
            continue
        if s and s.fingerprint == fp:
            plan.touched.append((s.video_id, f))
            if needs_reindex(s):
                index(f, fp)
            else:
                plan.unchanged.append(s)
            continue
        # New content at this path (or a new path). Is the content already indexed elsewhere?
        source = None
        for other in by_fp.get(fp, []):
            if other.path != f.path and other.status == "indexed" and not needs_reindex(other):
                source = other
                if not os.path.exists(other.path) and other.video_id not in claimed:
                    break  # prefer a vanished path: that is a rename
        if source is not None and not os.path.exists(source.path) and source.video_id not in claimed:
            claimed.add(source.video_id)
            plan.renamed.append((source.video_id, f, source.path))
            if s:  # the old content at this path is replaced by the moved file
                plan.deleted.append(s)
        elif source is not None:
            plan.copies.append((source.video_id, f))
            if s:
                plan.deleted.append(s)
        elif fp in planned:
            plan.duplicates.append(f)  # any old content at its path goes when it is copied
        else:
            index(f, fp)

    renamed_ids = {vid for vid, _, _ in plan.renamed}
    deleted_ids = {s.video_id for s in plan.deleted}
    for s in stored:
        if s.path not in seen and s.video_id not in renamed_ids and s.video_id not in deleted_ids \
                and _under(s.path, roots) and not os.path.exists(s.path):
            plan.deleted.append(s)
    return plan
