"""The FAISS side of the index: a derived, rebuildable copy of the vectors in DuckDB.

The FAISS id of a vector is its DuckDB ``clip_id``. A sidecar JSON records the
model and a checksum of the id set (count, sum, sum of squares) so that a
reader can tell in O(1) whether the file matches DuckDB; when it does not
(a crash between a DuckDB commit and the FAISS write, a deleted file), the
index is rebuilt from DuckDB. Files are written to a temporary name and
renamed, so a reader never sees a half-written index.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import faiss
import numpy as np

INDEX_FILE = "clips.faiss"
META_FILE = "clips.faiss.json"


@dataclass(frozen=True)
class IdChecksum:
    """Order-independent summary of a set of ids; equal sets give equal checksums."""

    count: int
    id_sum: int
    id_square_sum: int

    @classmethod
    def of(cls, ids: np.ndarray) -> "IdChecksum":
        # Object dtype sums with Python ints, which do not overflow.
        obj = np.asarray(ids, dtype=np.int64).astype(object)
        return cls(int(len(ids)), int(obj.sum()), int((obj * obj).sum()))


def new_flat_index(dim: int) -> faiss.IndexIDMap2:
    """Exact inner-product search over L2-normalised vectors (= cosine similarity)."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def ids_of(index: faiss.Index) -> np.ndarray:
    if index.ntotal == 0:
        return np.zeros(0, dtype=np.int64)
    return faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)


def write_index(index: faiss.Index, index_dir: str, model_id: str, checksum: IdChecksum,
                extra: dict | None = None) -> None:
    """Write the FAISS file and its sidecar atomically (temp name, fsync, rename)."""
    path = os.path.join(index_dir, INDEX_FILE)
    tmp = path + f".tmp{os.getpid()}"
    faiss.write_index(index, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    meta = {"model_id": model_id, "checksum": asdict(checksum), "ntotal": int(index.ntotal),
            "type": type(faiss.downcast_index(index)).__name__, **(extra or {})}
    meta_tmp = os.path.join(index_dir, META_FILE) + f".tmp{os.getpid()}"
    with open(meta_tmp, "w") as fh:
        json.dump(meta, fh)
        fh.flush()
        os.fsync(fh.fileno())
    # Sidecar last: a crash in between leaves a sidecar that does not match -> rebuild.
    os.replace(tmp, path)
    os.replace(meta_tmp, os.path.join(index_dir, META_FILE))


def read_meta(index_dir: str) -> dict | None:
    try:
        with open(os.path.join(index_dir, META_FILE)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def read_index(index_dir: str) -> faiss.Index | None:
    path = os.path.join(index_dir, INDEX_FILE)
    if not os.path.exists(path):
        return None
    try:
        return faiss.read_index(path)
    except RuntimeError:
        return None  # damaged: the caller rebuilds from DuckDB


def search_index(index: faiss.Index, queries: np.ndarray, k: int,
                 allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, clip ids) for each query row; ``allowed_ids`` restricts the search.

    The restriction is applied inside FAISS (an id selector), so k results come
    back even when the filter is selective. Missing results have id -1.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if index is None or index.ntotal == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    k = max(1, min(k, index.ntotal))
    if allowed_ids is None:
        return index.search(queries, k)
    allowed_ids = np.ascontiguousarray(allowed_ids, dtype=np.int64)
    if len(allowed_ids) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    selector = faiss.IDSelectorBatch(allowed_ids)
    params = faiss.SearchParameters(sel=selector)
    return index.search(queries, min(k, len(allowed_ids)), params=params)
