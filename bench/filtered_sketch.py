"""Where a filtered IVF query's time goes, and whether sign-bit sketches could replace the list walk.

Usage (after ``bench/search_latency.py --workdir DIR`` has written its archive there)::

    .venv/bin/python bench/filtered_sketch.py --workdir /tmp/sb [--json-out bench/out/filtered_sketch.json]

1. **Breakdown** of ``indexer.vectors._search_ivf_filtered`` (``--k`` results, by default the
   160 that ``bench/search_latency.py`` and the Searcher fetch) for the benchmark's 1,000 queries,
   each with its 1% folder filter, single query at a time as the Searcher runs them: building
   the id selector, the allowed ids' lists, the coarse search over candidate lists, choosing
   the budget, and FAISS's scan of the chosen lists (the walk with the selector, and scoring).
   The unfiltered search of the same queries is timed alongside.
2. **Sign-bit sketches** (a design that would not walk lists): 512 bits per clip (the signs of
   each vector minus the per-dimension median; +64 B per vector) in clip-id order. A filtered
   query ranks the allowed ids by Hamming distance to the query's sketch, then re-scores the best
   R exactly from the SQ8 codes (FAISS direct map, ``reconstruct_batch``). Recall@10 is against
   the exact filtered top 10 of the benchmark's ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_json_out  # noqa: E402


def _ms(values) -> dict:
    a = np.asarray(values) * 1e3
    return {"p50": round(float(np.percentile(a, 50)), 4), "p99": round(float(np.percentile(a, 99)), 4)}


def _recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    hits = [len(set(f.tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum())) for f, t in zip(found, truth)]
    return round(float(np.mean(hits)), 4)


def breakdown(index, queries, folders, allowed_of, k: int) -> dict:
    import faiss

    from indexer import vectors as vec

    ivf = vec.ivf_of(index)
    ivf.parallel_mode = 1  # as search_index runs a single query
    info = vec.ann_info(index)
    nprobe, factor = int(info["nprobe"]), float(info.get("filter_factor") or vec.FILTER_FACTOR)
    lmap = vec._list_map(index, ivf)
    quant = faiss.downcast_index(ivf.quantizer)
    ivf_index = faiss.downcast_index(index)
    steps = {name: [] for name in ("selector", "lists", "coarse", "budget", "scan", "total", "unfiltered")}
    for qv, folder in zip(queries, folders):
        allowed, q = allowed_of[int(folder)], qv[None].copy()
        t0 = time.perf_counter()
        vec.search_index(index, q, k)
        steps["unfiltered"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sel = vec._selector(allowed)
        t1 = time.perf_counter()
        counts = np.bincount(lmap.lists_of(allowed), minlength=ivf.nlist)
        candidates = np.flatnonzero(counts)
        t2 = time.perf_counter()
        bits = np.packbits(counts > 0, bitorder="little")
        coarse, order = quant.search(q, len(candidates), params=faiss.SearchParameters(sel=faiss.IDSelectorBitmap(bits)))
        t3 = time.perf_counter()
        budget = max(factor * nprobe * lmap.mean_list_size, 2.0 * k)
        cum = np.cumsum(counts[order], axis=1)
        probes = np.maximum(np.minimum(np.argmax(cum >= budget, axis=1) + 1, len(candidates)),
                            min(nprobe, len(candidates)))
        width = int(probes.max())
        assign = np.ascontiguousarray(order[:, :width], dtype=np.int64)
        cdis = np.ascontiguousarray(coarse[:, :width], dtype=np.float32)
        t4 = time.perf_counter()
        dist, labels = np.empty((1, k), np.float32), np.empty((1, k), np.int64)
        ivf_index.search_preassigned_c(1, faiss.swig_ptr(q), k, faiss.swig_ptr(assign), faiss.swig_ptr(cdis),
                                       faiss.swig_ptr(dist), faiss.swig_ptr(labels), False,
                                       faiss.SearchParametersIVF(nprobe=width, sel=sel))
        t5 = time.perf_counter()
        for name, a, b in (("selector", t0, t1), ("lists", t1, t2), ("coarse", t2, t3), ("budget", t3, t4),
                           ("scan", t4, t5), ("total", t0, t5)):
            steps[name].append(b - a)
    return {name: _ms(v) for name, v in steps.items()}


def sketches(index, queries, folders, allowed_of, truth, rerank: list[int], k: int) -> dict:
    import faiss

    ivf = faiss.extract_index_ivf(index)
    sq = faiss.downcast_index(index).sq
    invlists, code_size = ivf.invlists, ivf.invlists.code_size
    centroids = faiss.downcast_index(ivf.quantizer).reconstruct_n(0, ivf.nlist)
    t0 = time.perf_counter()
    ids_parts, x_parts = [], []
    for lst in range(ivf.nlist):
        n = invlists.list_size(lst)
        if n:
            codes = faiss.rev_swig_ptr(invlists.get_codes(lst), n * code_size).reshape(n, code_size).copy()
            x = sq.decode(codes)
            if ivf.by_residual:
                x += centroids[lst]
            ids_parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), n).copy())
            x_parts.append(x)
    median = np.median(np.concatenate(x_parts[::20]), axis=0)
    top = max(int(p.max()) for p in ids_parts)
    sketch = np.zeros((top + 1, x_parts[0].shape[1] // 8), np.uint8)
    for ids, x in zip(ids_parts, x_parts):
        sketch[ids] = np.packbits(x - median > 0, axis=1)
    del x_parts
    build_s = time.perf_counter() - t0
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    words = sketch.view(np.uint64)
    out = {"build_s": round(build_s, 2), "bytes_per_vector": sketch.shape[1], "rerank": {}}
    for r in rerank:
        lat, found = [], []
        for qv, folder in zip(queries, folders):
            allowed = allowed_of[int(folder)]
            t0 = time.perf_counter()
            qbits = np.packbits(qv - median > 0).view(np.uint64)
            ham = np.bitwise_count(words[allowed] ^ qbits).sum(axis=1, dtype=np.int32)
            cand = allowed[np.argpartition(ham, r)[:r]]
            scores = index.reconstruct_batch(cand) @ qv
            found.append(cand[np.argsort(-scores)[:k]])
            lat.append(time.perf_counter() - t0)
        out["rerank"][r] = {**_ms(lat), "recall10": _recall(found, truth)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--rerank", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--k", type=int, default=160,
                    help="results per query in the breakdown (160: what the Searcher fetches for k=10)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)

    from indexer.store import IndexStore
    from search.searcher import Filters, Searcher

    data = np.load(args.workdir / "queries.npz")
    queries, folders, truth = data["queries"], data["folders"], data["gt_filtered_ids"]
    with IndexStore(str(args.workdir / "index"), read_only=True) as store:
        index = store.load_faiss(rebuild_if_stale=False)
        cat = Searcher._load_catalog(store)
    allowed_of = {int(f): cat.clip_ids_matching(Filters(path_prefix=f"/archive/f{int(f):02d}"))
                  for f in np.unique(folders)}
    res = {"ntotal": int(index.ntotal), "queries": len(queries),
           "allowed_mean": float(np.mean([len(a) for a in allowed_of.values()])),
           "k": args.k, "breakdown_ms": breakdown(index, queries, folders, allowed_of, args.k),
           "sketch": sketches(index, queries, folders, allowed_of, truth, args.rerank, 10),
           "cpu_count": os.cpu_count(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    print(json.dumps(res, indent=2))
    write_json_out(args.json_out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
