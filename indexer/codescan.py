"""Filtered search over an ``IVF,SQ8`` index without walking its inverted lists.

FAISS applies an id filter by walking every entry of each probed list and testing it against
the filter. With 1% of the ids allowed, scoring as many allowed vectors as an unfiltered query
scores means walking about 100 times as many entries: that walk was most of a filtered query's
time (``bench/filtered_sketch.py``, BENCHMARKS.md). This module goes the other way round: each
allowed id is looked up in an id -> (list, offset) map, and the rows chosen are scored straight
from the memory of FAISS's inverted lists by a small compiled kernel (numba), with the same
SQ8 decoding FAISS uses. Which lists are scored is decided as before: lists holding allowed
ids, best centroid first, until the tuned budget of allowed vectors is reached, so results and
recall are the walk's.

What this module owns: the compiled kernel and the check that an index is one it can read.
``indexer.vectors`` owns the map (built with the list map, invalidated when the index changes)
and decides when to use it.

Why raw addresses are safe here: FAISS's ``ArrayInvertedLists`` keep each list in one
``std::vector``, whose storage only moves when the list grows or shrinks; the map holding the
addresses is dropped on every change vidx makes to an index (``vectors.add_vectors`` /
``vectors.remove_vectors``) and whenever ``ntotal`` differs from the one it was built at.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import binding as _llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

import faiss

# Rows are scored this many ahead of their prefetch: a row is 8 cache lines at 512 dims, and
# without the prefetch each row waited on memory (0.23 -> 0.15 ms for ~4,700 rows; measured
# with 2, 4, 8 and 16 ahead in the session's prototype, 16 best).
_PREFETCH_AHEAD = 16
_PREFETCH = "llvm.prefetch.p0" if _llvm.llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"


@intrinsic
def _as_pointer(typingctx, address):
    """An integer address as a ``void*`` (for ``numba.carray``)."""
    sig = types.voidptr(address)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


@intrinsic
def _prefetch(typingctx, address):
    """Ask the CPU to bring the cache line at ``address`` in (a hint: never faults)."""
    sig = types.void(address)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH)
        ptr = builder.inttoptr(args[0], cgutils.voidptr_t)
        # read, high temporal locality, data cache
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, fastmath=True)
def _scan_allowed(allowed, id_list, id_offset, list_addr, code_size, centroids, by_residual,
                  query, weights, const, budget, min_lists):  # pragma: no cover - compiled
    """Scores of the allowed ids held in the best lists: (row of ``allowed``, score) pairs."""
    nlist = len(list_addr)
    n = len(allowed)
    top = len(id_list)
    lists = np.empty(n, np.int32)
    counts = np.zeros(nlist, np.int64)
    for i in range(n):
        a = allowed[i]
        lst = -1
        if 0 <= a < top:
            lst = id_list[a]
        lists[i] = lst
        if lst >= 0:
            counts[lst] += 1
    ncand = 0
    for lst in range(nlist):
        if counts[lst] > 0:
            ncand += 1
    cand = np.empty(ncand, np.int64)
    cand_score = np.empty(ncand, np.float32)
    c = 0
    dim = len(query)
    for lst in range(nlist):
        if counts[lst] > 0:
            s = np.float32(0.0)
            for j in range(dim):
                s += centroids[lst, j] * query[j]
            cand[c] = lst
            cand_score[c] = s
            c += 1
    order = np.argsort(-cand_score)
    chosen = np.zeros(nlist, np.bool_)
    list_base = np.zeros(nlist, np.float32)
    scored = 0
    taken = 0
    for o in order:
        if taken >= min_lists and scored >= budget:
            break
        lst = cand[o]
        chosen[lst] = True
        list_base[lst] = const + (cand_score[o] if by_residual else np.float32(0.0))
        scored += counts[lst]
        taken += 1
    rows = np.empty(scored, np.int64)
    addr = np.empty(scored, np.int64)
    m = 0
    for i in range(n):
        lst = lists[i]
        if lst >= 0 and chosen[lst]:
            rows[m] = i
            addr[m] = list_addr[lst] + np.int64(id_offset[allowed[i]]) * code_size
            m += 1
    scores = np.empty(m, np.float32)
    for r in range(min(_PREFETCH_AHEAD, m)):
        for line in range(0, code_size, 64):
            _prefetch(addr[r] + line)
    for r in range(m):
        if r + _PREFETCH_AHEAD < m:
            ahead = addr[r + _PREFETCH_AHEAD]
            for line in range(0, code_size, 64):
                _prefetch(ahead + line)
        code = numba.carray(_as_pointer(addr[r]), (code_size,), np.uint8)
        s = np.float32(0.0)
        for j in range(code_size):
            s += weights[j] * np.float32(code[j])
        scores[r] = list_base[lists[rows[r]]] + s
    return rows, scores


class Sq8Reader:
    """What the kernel needs from one ``IVF,SQ8`` inner-product index: the decoding constants,
    the centroids and the address of each list's codes. Valid until the index changes."""

    def __init__(self, ivf_index: faiss.IndexIVFScalarQuantizer):
        d = ivf_index.d
        trained = faiss.vector_to_array(ivf_index.sq.trained).astype(np.float32)
        self.vmin = np.ascontiguousarray(trained[:d])
        # FAISS decodes a code byte c of dimension j as vmin[j] + (c + 0.5) / 255 * vdiff[j].
        self.vdiff_255 = np.ascontiguousarray(trained[d:] / np.float32(255.0))
        self.by_residual = bool(ivf_index.by_residual)
        quantizer = faiss.downcast_index(ivf_index.quantizer)
        self.centroids = np.ascontiguousarray(quantizer.reconstruct_n(0, ivf_index.nlist), dtype=np.float32)
        self.code_size = int(ivf_index.code_size)
        invlists = ivf_index.invlists
        self.list_addr = np.zeros(ivf_index.nlist, np.int64)
        for list_no in range(ivf_index.nlist):
            size = invlists.list_size(list_no)
            if size:
                codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * self.code_size)
                self.list_addr[list_no] = codes.ctypes.data

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray, id_list: np.ndarray,
               id_offset: np.ndarray, budget: float, min_lists: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query among ``allowed`` (unique ids), scoring the allowed ids
        of the best lists until ``budget`` of them are scored (at least ``min_lists`` lists)."""
        nq = len(queries)
        dist = np.full((nq, k), np.finfo(np.float32).min, np.float32)
        labels = np.full((nq, k), -1, np.int64)
        for qi in range(nq):
            q = np.ascontiguousarray(queries[qi], dtype=np.float32)
            weights = q * self.vdiff_255
            const = np.float32(q @ self.vmin + np.float32(0.5) * weights.sum())
            rows, scores = _scan_allowed(allowed, id_list, id_offset, self.list_addr, self.code_size,
                                         self.centroids, self.by_residual, q, weights, const,
                                         float(budget), int(min_lists))
            m = min(k, len(rows))
            if m == 0:
                continue
            best = np.argpartition(-scores, m - 1)[:m] if m < len(rows) else np.arange(len(rows))
            best = best[np.argsort(-scores[best], kind="stable")]
            dist[qi, :m] = scores[best]
            labels[qi, :m] = allowed[rows[best]]
        return dist, labels


def readable(ivf_index) -> bool:
    """Whether the kernel can read this index: ``IVF,SQ8`` (8-bit codes) with inner product, a
    flat coarse quantizer and FAISS's in-memory array lists."""
    return (isinstance(ivf_index, faiss.IndexIVFScalarQuantizer)
            and ivf_index.sq.qtype == faiss.ScalarQuantizer.QT_8bit
            and ivf_index.metric_type == faiss.METRIC_INNER_PRODUCT
            and isinstance(faiss.downcast_index(ivf_index.quantizer), faiss.IndexFlat)
            and isinstance(faiss.downcast_InvertedLists(ivf_index.invlists), faiss.ArrayInvertedLists))
