"""The FAISS side of the index: a derived, rebuildable copy of the vectors in DuckDB.

The FAISS id of a vector is its DuckDB ``clip_id``. A sidecar JSON records the
model and a checksum of the id set (count, sum, sum of squares) so that a
reader can tell in O(1) whether the file matches DuckDB; when it does not
(a crash between a DuckDB commit and the FAISS write, a deleted file), the
index is repaired or rebuilt from DuckDB. Files are written to a temporary
name and renamed, so a reader never sees a half-written index.

Two kinds of index (chosen by archive size in ``indexer.ann``):
  * ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact inner product (= cosine);
  * ``ivf``: ``IVF{nlist},SQ8`` with inner product, ids stored in the lists.
    Its search parameters (``nprobe``, ``filter_factor``) are tuned at build
    time and recorded under ``"ann"`` in the sidecar; ``attach_ann_info``
    (called when the index is loaded) hands them to ``search_index``, which
    applies them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import weakref
from collections.abc import Callable
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


def ivf_of(index: faiss.Index | None):
    """The ``IndexIVF`` inside ``index`` (None for a flat index)."""
    if index is None:
        return None
    return faiss.try_extract_index_ivf(index)


def ids_of(index: faiss.Index) -> np.ndarray:
    """Every id stored in ``index`` (unordered for an IVF index)."""
    if index.ntotal == 0:
        return np.zeros(0, dtype=np.int64)
    ivf = ivf_of(index)
    if ivf is None:
        return faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)
    parts = [ids for ids in (_list_ids(ivf.invlists, n) for n in range(ivf.nlist)) if len(ids)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _list_ids(invlists, list_no: int) -> np.ndarray:
    """A copy of the ids stored in one inverted list of an IVF index."""
    size = invlists.list_size(list_no)
    if not size:
        return np.zeros(0, dtype=np.int64)
    ptr = invlists.get_ids(list_no)
    try:
        return faiss.rev_swig_ptr(ptr, size).copy()
    finally:
        invlists.release_ids(list_no, ptr)


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


# -- search ----------------------------------------------------------------------------

# Up to this many allowed ids, an approximate index with a ``vector_source`` is searched
# exactly over just those vectors (fetched, e.g. from DuckDB: tens of ms, growing with the
# archive), instead of over their SQ8 codes inside FAISS (about a millisecond).
EXACT_SUBSET_MAX = 5_000

# What the sidecar's "ann" entry says about an index object (nprobe, nlist, ...).
# Keyed weakly by the Python object, which is the one the loader hands out.
_ANN_INFO: "weakref.WeakKeyDictionary[faiss.Index, dict]" = weakref.WeakKeyDictionary()


def attach_ann_info(index: faiss.Index | None, info: dict | None) -> None:
    """Record the search parameters of ``index`` (the sidecar's ``"ann"`` entry) for ``search_index``."""
    if index is None or not info:
        return
    _ANN_INFO[index] = dict(info)
    ivf = ivf_of(index)
    if ivf is not None and info.get("nprobe"):
        ivf.nprobe = int(info["nprobe"])  # also the default of a plain index.search()


def ann_info(index: faiss.Index) -> dict:
    """The "ann" description of ``index``: as attached, else derived from the index itself."""
    info = _ANN_INFO.get(index)
    if info is not None:
        return dict(info)
    ivf = ivf_of(index)
    if ivf is None:
        return {"kind": "flat"}
    return {"kind": "ivf", "nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe)}


def _empty(nq: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)


def _selector(ids: np.ndarray):
    """An id selector for ``ids``: a bitmap when the ids are dense enough, else a hash set."""
    top = int(ids.max())
    if top < 64 * len(ids) + (1 << 22):
        present = np.zeros(top + 1, dtype=bool)
        present[ids] = True
        return faiss.IDSelectorBitmap(np.packbits(present, bitorder="little"))  # keeps the array alive
    return faiss.IDSelectorBatch(ids)


def _search_ivf(index, ivf, queries: np.ndarray, k: int, nprobe: int, sel=None) -> tuple[np.ndarray, np.ndarray]:
    """IVF search; rows that come back short (fewer than k in the probed lists) probe more lists."""
    nprobe = max(1, min(int(nprobe), ivf.nlist))
    params = faiss.SearchParametersIVF(nprobe=nprobe) if sel is None else \
        faiss.SearchParametersIVF(nprobe=nprobe, sel=sel)
    dist, ids = index.search(queries, k, params=params)
    short = ids[:, -1] < 0
    while short.any() and nprobe < ivf.nlist:
        nprobe = min(ivf.nlist, nprobe * 4)
        params.nprobe = nprobe
        d2, i2 = index.search(queries[short], k, params=params)
        dist[short], ids[short] = d2, i2
        short[short] = i2[:, -1] < 0
    return dist, ids


# A filtered IVF search scores about FILTER_FACTOR * (what an unfiltered search scores) allowed
# vectors, from the lists that hold allowed ids, best centroids first. The build tunes it per
# index (sidecar "filter_factor"); this is the default for an index without one.
FILTER_FACTOR = 1.0


@dataclass
class _ListMap:
    """Which inverted list holds each id, so that a filtered search visits
    only lists that hold allowed ids. 2-4 bytes per id (dense) or 12 (sparse ids); built on
    the first filtered search and dropped when the index changes (``add_vectors``,
    ``remove_vectors``) or ``ntotal`` differs. A dense map also holds each id's offset in
    its list (4 bytes per id), for the list-free filtered scan of ``indexer.codescan``."""

    ntotal: int
    dense: np.ndarray | None  # list of id i at [i], -1 where none (ids up to a few x ntotal)
    sorted_ids: np.ndarray | None  # else: ids sorted, and their lists
    sorted_lists: np.ndarray | None
    mean_list_size: float
    offsets: np.ndarray | None = None  # with ``dense``: offset of id i in its list
    reader: object | None = None  # codescan.Sq8Reader when the index is one it reads

    def lists_of(self, ids: np.ndarray) -> np.ndarray:
        """The list of each id that is in the index (absent ids are dropped)."""
        if self.dense is not None:
            ids = ids[ids < len(self.dense)]
            lists = self.dense[ids]
            return lists[lists >= 0]
        pos = np.minimum(np.searchsorted(self.sorted_ids, ids), len(self.sorted_ids) - 1)
        return self.sorted_lists[pos[self.sorted_ids[pos] == ids]]


_LIST_MAPS: "weakref.WeakKeyDictionary[faiss.Index, _ListMap]" = weakref.WeakKeyDictionary()


def add_vectors(index: faiss.Index, mat: np.ndarray, ids: np.ndarray) -> None:
    """``index.add_with_ids``, dropping what filtered search keeps about the index's lists
    (their addresses move when lists grow). Every change vidx makes to an index goes through
    here or ``remove_vectors``."""
    _LIST_MAPS.pop(index, None)
    index.add_with_ids(mat, ids)


def remove_vectors(index: faiss.Index, ids: np.ndarray) -> int:
    """``index.remove_ids`` (see ``add_vectors``); returns how many were removed."""
    _LIST_MAPS.pop(index, None)
    return index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))


def clear_vectors(index: faiss.Index) -> None:
    """``index.reset()`` (see ``add_vectors``)."""
    _LIST_MAPS.pop(index, None)
    index.reset()


def _codescan():
    """``indexer.codescan``, imported on the first filtered search of an IVF index (numba costs
    ~0.3 s and ~120 MB); None, with one warning, where numba cannot be imported."""
    global _CODESCAN_MISSING
    if _CODESCAN_MISSING:
        return None
    try:
        from indexer import codescan
    except ImportError as exc:
        _CODESCAN_MISSING = True
        logging.getLogger(__name__).warning(
            "filtered search falls back to FAISS's slower list walk: %s (fix: pip install 'numba>=0.61')", exc)
        return None
    return codescan


_CODESCAN_MISSING = False


def _list_map(index, ivf) -> _ListMap | None:
    cached = _LIST_MAPS.get(index)
    if cached is not None and cached.ntotal == index.ntotal:
        return cached
    quantizer = faiss.downcast_index(ivf.quantizer)
    if not isinstance(quantizer, faiss.IndexFlat) or index.ntotal == 0:
        return None
    invlists = ivf.invlists
    id_parts, list_parts = [], []
    for list_no in range(ivf.nlist):
        ids = _list_ids(invlists, list_no)
        if len(ids):
            id_parts.append(ids)
            list_parts.append(np.full(len(ids), list_no, np.int32))
    ids = np.concatenate(id_parts)
    lists = np.concatenate(list_parts)
    top = int(ids.max())
    list_type = np.int16 if ivf.nlist < 2 ** 15 else np.int32
    offsets = reader = None
    if top < 4 * len(ids) + (1 << 20) and ids.min() >= 0:
        dense = np.full(top + 1, -1, list_type)
        dense[ids] = lists
        sorted_ids = sorted_lists = None
        ivf_index = faiss.downcast_index(index)
        codescan = _codescan()
        if codescan is not None and codescan.readable(ivf_index):
            offsets = np.zeros(top + 1, np.int32)
            offsets[ids] = np.concatenate([np.arange(len(p), dtype=np.int32) for p in id_parts])
            reader = codescan.Sq8Reader(ivf_index)
    else:
        order = np.argsort(ids, kind="stable")
        dense, sorted_ids, sorted_lists = None, ids[order], lists[order].astype(list_type)
    lmap = _ListMap(int(index.ntotal), dense, sorted_ids, sorted_lists, len(ids) / ivf.nlist, offsets, reader)
    _LIST_MAPS[index] = lmap
    return lmap


def _search_ivf_filtered(index, ivf, queries: np.ndarray, k: int, nprobe: int, allowed: np.ndarray,
                         filter_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """IVF search restricted to ``allowed`` (an id selector), visiting only lists that hold
    allowed ids, best centroids first, until about ``filter_factor * nprobe * mean list size``
    allowed vectors are scored (at least ``nprobe`` lists; all of them when that is not enough
    for k, or ``filter_factor`` is inf). Rows that come back short look at every such list.
    An ``IVF,SQ8`` index is not walked: see ``indexer.codescan``."""
    ivf_index = faiss.downcast_index(index)
    lmap = _list_map(index, ivf) if isinstance(ivf_index, faiss.IndexIVF) else None
    if lmap is None:  # a wrapped IVF or another coarse quantizer: probe more lists, selector only
        sel = _selector(allowed)
        fraction = min(1.0, len(allowed) / index.ntotal)
        probe = ivf.nlist if not math.isfinite(filter_factor) else \
            min(ivf.nlist, math.ceil(nprobe * max(filter_factor, 1.0) / fraction))
        return _search_ivf(index, ivf, queries, k, probe, sel)
    budget = max(float(filter_factor) * nprobe * lmap.mean_list_size, 2.0 * k)
    if lmap.reader is not None:
        # No list walk: the allowed ids' rows are scored where they lie (indexer.codescan). Same
        # lists, same results; 2x faster at a 1% filter and faster at every share measured up
        # to 80% (BENCHMARKS.md, "Search").
        if len(allowed) > 1 and not (allowed[1:] > allowed[:-1]).all():
            allowed = np.unique(allowed)  # an id listed twice would be scored twice
        return lmap.reader.search(queries, k, allowed, lmap.dense, lmap.offsets, budget, nprobe)
    sel = _selector(allowed)
    counts = np.bincount(lmap.lists_of(allowed), minlength=ivf.nlist)
    candidates = np.flatnonzero(counts)
    nq = len(queries)
    dist = np.full((nq, k), np.finfo(np.float32).min, np.float32)
    labels = np.full((nq, k), -1, np.int64)
    if len(candidates) == 0:
        return dist, labels
    # The candidate lists scored by the coarse quantizer itself (numpy/BLAS for one query is
    # slow when the CPUs are busy), best first.
    quantizer = faiss.downcast_index(ivf.quantizer)
    if len(candidates) < ivf.nlist:
        bits = np.packbits(counts > 0, bitorder="little")
        coarse, order = quantizer.search(queries, len(candidates),
                                         params=faiss.SearchParameters(sel=faiss.IDSelectorBitmap(bits)))
    else:
        coarse, order = quantizer.search(queries, ivf.nlist)
    if math.isfinite(budget):
        cum = np.cumsum(counts[order], axis=1)
        probes = np.minimum(np.argmax(cum >= budget, axis=1) + 1, len(candidates))
        probes[cum[:, -1] < budget] = len(candidates)
        probes = np.maximum(probes, min(nprobe, len(candidates)))
    else:
        probes = np.full(nq, len(candidates))
    while True:
        width = int(probes.max())
        assign = np.ascontiguousarray(order[:, :width], dtype=np.int64)
        cdis = np.ascontiguousarray(coarse[:, :width], dtype=np.float32)
        assign[np.arange(width)[None, :] >= probes[:, None]] = -1  # faiss skips list -1
        params = faiss.SearchParametersIVF(nprobe=width, sel=sel)
        ivf_index.search_preassigned_c(nq, faiss.swig_ptr(queries), k, faiss.swig_ptr(assign),
                                       faiss.swig_ptr(cdis), faiss.swig_ptr(dist), faiss.swig_ptr(labels),
                                       False, params)
        short = (labels[:, -1] < 0) & (probes < len(candidates))
        if not short.any():
            return dist, labels
        probes[short] = len(candidates)  # the rows that came back short look at every list


def _search_subset(queries: np.ndarray, k: int, allowed: np.ndarray,
                   vector_source: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]):
    """Exact top-k over just the allowed vectors, fetched from ``vector_source``."""
    found, mat = vector_source(allowed)
    found = np.asarray(found, dtype=np.int64)
    nq = len(queries)
    dist = np.full((nq, k), np.finfo(np.float32).min, np.float32)
    ids = np.full((nq, k), -1, np.int64)
    if len(found) == 0:
        return dist, ids
    scores = queries @ np.ascontiguousarray(mat, dtype=np.float32).T
    m = min(k, len(found))
    top = np.argpartition(-scores, m - 1, axis=1)[:, :m] if m < len(found) else \
        np.broadcast_to(np.arange(len(found)), (nq, len(found)))
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    dist[:, :m] = np.take_along_axis(top_scores, order, axis=1)
    ids[:, :m] = found[top]
    return dist, ids


def search_index(index: faiss.Index, queries: np.ndarray, k: int,
                 allowed_ids: np.ndarray | None = None, *,
                 vector_source: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                 nprobe: int | None = None, filter_factor: float | None = None,
                 exact_subset_max: int = EXACT_SUBSET_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, clip ids) for each query row; ``allowed_ids`` restricts the search.

    The restriction is applied inside the search (an id selector), so k results
    come back even when the filter is selective; missing results have id -1.

    * flat index: exact, with or without a filter;
    * IVF index: ``nprobe`` lists (the tuned value from the sidecar unless given).
      Under a filter, only lists that hold allowed ids are visited, best centroid
      first, until about ``filter_factor`` (tuned, sidecar) times as many allowed
      vectors are scored as an unfiltered search scores; a selective filter thus
      visits every list holding an allowed id (exhaustive over the allowed set).
      The ranking is over SQ8 codes. When ``vector_source`` is given and at most
      ``exact_subset_max`` ids are allowed, the allowed vectors are fetched instead
      and searched exactly.

    ``vector_source(ids) -> (found_ids, float32 matrix)`` returns the stored vectors of
    those ids (e.g. ``IndexStore.fetch_vectors``).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None]
    if index is None or index.ntotal == 0 or k < 1:
        return _empty(len(queries))
    ivf = ivf_of(index)
    info = ann_info(index) if ivf is not None else {}
    base_nprobe = int(nprobe or info.get("nprobe") or 1)
    if ivf is not None:
        # One query spreads its probed lists over the threads (FAISS parallel_mode 1); a batch
        # gives each thread whole queries (mode 0). On 2 cores, mode 1 cut a single query's
        # p50 by about 27% unfiltered and 38% filtered, with the same results
        # (bench/ivf_parallel_mode.py, BENCHMARKS.md).
        ivf.parallel_mode = 1 if len(queries) == 1 else 0
    if allowed_ids is None:
        k = min(k, index.ntotal)
        if ivf is None:
            return index.search(queries, k)
        return _search_ivf(index, ivf, queries, k, base_nprobe, None)
    allowed = np.ascontiguousarray(allowed_ids, dtype=np.int64).ravel()
    if len(allowed) and allowed.min() < 0:
        allowed = allowed[allowed >= 0]
    if len(allowed) == 0:
        return _empty(len(queries))
    k = min(k, len(allowed), index.ntotal)
    if ivf is None:
        sel = _selector(allowed)
        return index.search(queries, k, params=faiss.SearchParameters(sel=sel))
    if vector_source is not None and len(allowed) <= exact_subset_max:
        return _search_subset(queries, k, allowed, vector_source)
    factor = info.get("filter_factor", FILTER_FACTOR) if filter_factor is None else filter_factor
    return _search_ivf_filtered(index, ivf, queries, k, base_nprobe, allowed,
                                math.inf if factor is None else float(factor))
