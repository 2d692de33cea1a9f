"""Could a second, filter-friendly code reach the filtered 2x target? A prototype (issue 3).

vidx's filtered search walks IVF lists and scores SQ8 codes (``bench/filtered_direct.py``
showed that scoring the needed SQ8 codes alone costs about a whole unfiltered query). This
prototype tries the usual answer, a much cheaper code for the filtered candidates plus an exact
rerank:
  1. a second FAISS index, ``IVF{blocks},PQ{M}x4fs`` (4-bit PQ "fast scan", not by residual),
     whose lists are blocks of ``--block`` consecutive clip ids instead of k-means cells.
     A filter selects whole videos, i.e. runs of consecutive ids, so a filtered query visits
     exactly the blocks that hold allowed ids and never walks anything else (~M/2 + 8 B/vector);
  2. per query: fast-scan those blocks (id selector for the boundary blocks) for the top
     ``R`` candidates, reconstruct them from the SQ8 IVF (hashtable direct map, ~40 B/vector)
     and rerank them exactly, keep 160.
It reports the fast-scan and rerank times, recall@10 against exact filtered search for
several ``R``, and the memory both additions cost, next to vidx's filtered and unfiltered
searches on the same queries.

Needs an archive kept by ``bench/search_latency.py --workdir DIR`` (same DIR here).
Run:   .venv/bin/python bench/filtered_blocks.py --workdir /tmp/sb [--queries 500] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import load_kept_search_archive, machine_info, recall_at_10, write_json_out  # noqa: E402
from bench.search_latency import FETCH  # noqa: E402  (what search.Searcher asks for at k=10)

RERANK = (160, 320, 640, 1280)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _ms(values: list[float]) -> dict:
    return {"p50": round(float(np.percentile(values, 50)) * 1e3, 3),
            "p99": round(float(np.percentile(values, 99)) * 1e3, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="an archive kept by bench/search_latency.py --workdir")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--block", type=int, default=64, help="consecutive clip ids per list")
    ap.add_argument("--pq-m", type=int, default=64, help="PQ sub-quantizers (4 bits each)")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    import faiss

    from indexer import vectors as vec
    from indexer.store import IndexStore

    kept = load_kept_search_archive(args.workdir, args.queries)
    queries, folders, truth, index, allowed_of = kept.queries, kept.folders, kept.truth, kept.index, kept.allowed_of
    out: dict = {"machine": machine_info(), "queries": len(queries), "block": args.block, "pq_m": args.pq_m}
    with IndexStore(kept.index_dir, read_only=True) as store:
        _, sample = store.sample_vectors(65_536, seed=7)
        top_id = int(store.clip_vector_ids().max())
        d = sample.shape[1]
        nblocks = top_id // args.block + 1
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(np.zeros((nblocks, d), np.float32))  # never searched: lists are assigned by id
        blocks = faiss.IndexIVFPQFastScan(quantizer, d, nblocks, args.pq_m, 4, faiss.METRIC_INNER_PRODUCT)
        blocks.by_residual = False
        t0 = time.monotonic()
        blocks.train(np.ascontiguousarray(sample, dtype=np.float32))
        out["train_s"] = round(time.monotonic() - t0, 2)
        t0 = time.monotonic()
        # Lists are chosen by id, not by a quantizer. IndexIVF.add_core with precomputed lists
        # mis-packs fast-scan codes in faiss 1.15.1 (wrong results, or a heap corruption), so each
        # block is added through add_with_ids with a one-centroid quantizer whose only id is
        # the block number (by_residual=False: the codes do not depend on the list).
        steer = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        steer.add_with_ids(np.zeros((1, d), np.float32), np.zeros(1, np.int64))
        blocks.quantizer = steer
        for ids, mat in store.scan_vectors():
            order = np.argsort(ids, kind="stable")
            ids, mat = ids[order].astype(np.int64), np.ascontiguousarray(mat[order], dtype=np.float32)
            lists = ids // args.block
            bounds = np.flatnonzero(np.diff(lists)) + 1
            for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(ids)]])):
                steer.id_map.clear()
                steer.id_map.push_back(int(lists[lo]))
                blocks.add_with_ids(mat[lo:hi], ids[lo:hi])
        blocks.quantizer = quantizer
        out["add_s"] = round(time.monotonic() - t0, 2)
        # codes are stored in blocks of 32 vectors (bbs), 4 bits per sub-quantizer, plus 8-byte ids
        sizes = np.array([blocks.invlists.list_size(i) for i in range(nblocks)], np.int64)
        code_bytes = int((-(-sizes // 32) * 32).sum()) * args.pq_m // 2 + 8 * int(sizes.sum())
        out["block_index_bytes_per_vector"] = round(code_bytes / index.ntotal, 1)
    ivf = faiss.extract_index_ivf(index)
    rss1 = _rss()
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # clip ids are not 0..n-1
    out["direct_map_bytes_per_vector"] = round((_rss() - rss1) / index.ntotal, 1)

    def scan(q: np.ndarray, allowed: np.ndarray, r: int) -> np.ndarray:
        lists = np.unique(allowed // args.block)[None].astype(np.int64)
        sel = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
        dist = np.empty((1, r), np.float32)
        labels = np.empty((1, r), np.int64)
        coarse = np.zeros(lists.shape, np.float32)
        blocks.search_preassigned_c(1, faiss.swig_ptr(q), r, faiss.swig_ptr(lists), faiss.swig_ptr(coarse),
                                    faiss.swig_ptr(dist), faiss.swig_ptr(labels), False,
                                    faiss.SearchParametersIVF(nprobe=lists.shape[1], sel=sel))
        return labels[0][labels[0] >= 0]

    def rerank(q: np.ndarray, cand: np.ndarray) -> np.ndarray:
        scores = index.reconstruct_batch(cand) @ q[0]
        return cand[np.argsort(-scores, kind="stable")[:FETCH]]

    rows = [(queries[i:i + 1], allowed_of[int(folders[i])]) for i in range(len(queries))]
    for q, allowed in rows[:20]:  # warm-up
        vec.search_index(index, q, FETCH, allowed)
        rerank(q, scan(q, allowed, RERANK[0]))
    lat = []
    for q, _ in rows:
        t0 = time.perf_counter()
        vec.search_index(index, q, FETCH)
        lat.append(time.perf_counter() - t0)
    out["vidx_unfiltered_ms"] = _ms(lat)
    lat, found = [], []
    for q, allowed in rows:
        t0 = time.perf_counter()
        found.append(vec.search_index(index, q, FETCH, allowed)[1][0])
        lat.append(time.perf_counter() - t0)
    out["vidx_filtered_ms"] = _ms(lat)
    out["vidx_filtered_recall10"] = round(recall_at_10(found, truth), 4)
    out["blocks"] = []
    for r in RERANK:
        t_scan, t_total, found, found_scan = [], [], [], []
        for q, allowed in rows:
            t0 = time.perf_counter()
            cand = scan(q, allowed, r)
            t1 = time.perf_counter()
            found.append(rerank(q, cand))
            t_total.append(time.perf_counter() - t0)
            t_scan.append(t1 - t0)
            found_scan.append(cand)
        out["blocks"].append({"rerank": r, "scan_ms": _ms(t_scan), "total_ms": _ms(t_total),
                              "recall10_scan_only": round(recall_at_10(found_scan, truth), 4),
                              "recall10": round(recall_at_10(found, truth), 4)})
    print(f"vidx: unfiltered p50 {out['vidx_unfiltered_ms']['p50']:.3f} ms; filtered p50 "
          f"{out['vidx_filtered_ms']['p50']:.3f} ms, recall@10 {out['vidx_filtered_recall10']:.3f}")
    print(f"block index +{out['block_index_bytes_per_vector']} B/vector, direct map "
          f"+{out['direct_map_bytes_per_vector']} B/vector")
    for b in out["blocks"]:
        print(f"blocks, rerank {b['rerank']}: scan p50 {b['scan_ms']['p50']:.3f} ms, total p50 "
              f"{b['total_ms']['p50']:.3f} / p99 {b['total_ms']['p99']:.3f} ms, recall@10 {b['recall10']:.3f} "
              f"(scan only {b['recall10_scan_only']:.3f})")
    write_json_out(args.json_out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
