"""Could a filtered IVF search skip the list walk? A best-case prototype (issue 3, filtered 2x target).

vidx's filtered search (``indexer.vectors._search_ivf_filtered``) visits the lists that hold
allowed ids, best centroid first, until it has scored ``filter_factor * nprobe * mean list
size`` allowed vectors; FAISS walks every entry of those lists and tests each id against the
filter bitmap. With a 1% filter that is ~100x more entries walked than scored.

This prototype removes the walk entirely, to bound what any walk-free design could gain:
  1. it copies every SQ8 code into one array in list order (a second copy of the vectors,
     ~512 B/vector more: over the 700 B/vector budget, hence "prototype"), with an
     id -> row map;
  2. per query: centroid scores (FAISS), the same allowed-vector budget picked by centroid
     score (argpartition), the chosen codes gathered, scored by FAISS's own SQ8 code
     (``IndexScalarQuantizer`` with the IVF's trained quantizer: residual scores) plus the
     centroid term, top 160.
It reports the time of each step, the total against vidx's filtered and unfiltered searches
on the same queries, and recall@10 of both against exact filtered search.

Needs an archive kept by ``bench/search_latency.py --workdir DIR`` (same DIR here).
Run:   .venv/bin/python bench/filtered_direct.py --workdir /tmp/sb [--queries 500] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import load_kept_search_archive, machine_info, recall_at_10, write_json_out  # noqa: E402
from bench.search_latency import FETCH  # noqa: E402  (what search.Searcher asks for at k=10)



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="an archive kept by bench/search_latency.py --workdir")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    import faiss
    from faiss.contrib.inspect_tools import get_invlist

    from indexer import vectors as vec

    kept = load_kept_search_archive(args.workdir, args.queries)
    queries, folders, truth, index, allowed_of = kept.queries, kept.folders, kept.truth, kept.index, kept.allowed_of
    info = vec.ann_info(index)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    nlist, code_size = ivf.nlist, ivf.code_size
    sizes = np.array([ivf.invlists.list_size(i) for i in range(nlist)], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    codes = np.empty((int(starts[-1]), code_size), np.uint8)
    ids = np.empty(int(starts[-1]), np.int64)
    for i in range(nlist):
        list_ids, list_codes = get_invlist(ivf.invlists, i)
        codes[starts[i]:starts[i + 1]] = list_codes.reshape(-1, code_size)
        ids[starts[i]:starts[i + 1]] = list_ids
    row_of = np.full(int(ids.max()) + 1, -1, np.int64)
    row_of[ids] = np.arange(len(ids))
    list_of = np.repeat(np.arange(nlist), sizes).astype(np.int16)
    scorer = faiss.IndexScalarQuantizer(ivf.d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    scorer.sq = ivf.sq  # the IVF's trained quantizer: decodes residuals
    scorer.is_trained = True
    budget = int(float(info["filter_factor"]) * int(info["nprobe"]) * sizes.mean())
    steps: dict[str, list[float]] = defaultdict(list)

    quantizer = faiss.downcast_index(ivf.quantizer)
    coarse = np.empty(nlist, np.float32)

    def direct(q: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        cdis, clist = quantizer.search(q[None], nlist)  # FAISS, not numpy/BLAS: no thread-pool clash
        coarse[clist[0]] = cdis[0]
        rows = row_of[allowed]
        est = coarse[list_of[rows]]  # centroid term of each allowed vector's score
        t1 = time.perf_counter()
        if budget < len(rows):
            pick = np.argpartition(-est, budget)[:budget]
            rows, est = rows[pick], est[pick]
        t2 = time.perf_counter()
        sub = codes[rows]
        t3 = time.perf_counter()
        scorer.reset()
        scorer.add_sa_codes(sub)
        t4 = time.perf_counter()
        scorer.search(q[None], FETCH)  # the scoring floor: every code scored, small heap, no centroid term
        t5 = time.perf_counter()
        # The right ranking needs every residual score plus its centroid term: range_search
        # with no floor returns them all (a k=len heap costs more). Timed apart from the floor.
        _, dist, pos = scorer.range_search(q[None], -1e30)
        score = dist + est[pos]
        top = np.argpartition(-score, FETCH)[:FETCH]
        top = top[np.argsort(-score[top])]
        found = ids[rows[pos[top]]]
        t6 = time.perf_counter()
        for name, a, b in (("centroid scores", t, t1), ("pick budget", t1, t2), ("gather codes", t2, t3),
                           ("copy into scorer", t3, t4), ("score floor", t4, t5),
                           ("all scores + top-160", t5, t6)):
            steps[name].append(b - a)
        return found

    for q, f in zip(queries[:20], folders[:20]):  # warm-up (also builds vidx's id -> list map)
        direct(q, allowed_of[int(f)])
        vec.search_index(index, q[None], FETCH, allowed_of[int(f)])
    steps.clear()
    lat = {"unfiltered": [], "vidx filtered": []}
    found = {"vidx filtered": [], "direct prototype": []}
    for q, f in zip(queries, folders):
        allowed = allowed_of[int(f)]
        t = time.perf_counter()
        vec.search_index(index, q[None], FETCH)
        lat["unfiltered"].append(time.perf_counter() - t)
        t = time.perf_counter()
        _, got = vec.search_index(index, q[None], FETCH, allowed)
        lat["vidx filtered"].append(time.perf_counter() - t)
        found["vidx filtered"].append(got[0][:10])
        found["direct prototype"].append(direct(q, allowed)[:10])

    res = {"benchmark": "filtered_direct", "command_line": " ".join([sys.executable] + sys.argv),
           "machine": machine_info(), "ntotal": int(index.ntotal), "budget": budget,
           "allowed_mean": float(np.mean([len(a) for a in allowed_of.values()])),
           "p50_ms": {k: float(np.percentile(v, 50) * 1e3) for k, v in lat.items()},
           "p99_ms": {k: float(np.percentile(v, 99) * 1e3) for k, v in lat.items()},
           "recall10": {k: recall_at_10(v, truth) for k, v in found.items()},
           "direct_steps_p50_ms": {k: float(np.percentile(v, 50) * 1e3) for k, v in steps.items()}}
    floor = ("centroid scores", "pick budget", "gather codes", "copy into scorer", "score floor")
    res["direct_lower_bound_p50_ms"] = sum(res["direct_steps_p50_ms"][k] for k in floor)
    print(f"{res['ntotal']:,} vectors, ~{res['allowed_mean']:.0f} allowed per filter, budget {budget} allowed "
          f"vectors scored, {len(queries)} queries:")
    for k in lat:
        rec = f", recall@10 {res['recall10'][k]:.3f}" if k in res["recall10"] else ""
        print(f"  {k:17s} p50 {res['p50_ms'][k]:.3f} ms, p99 {res['p99_ms'][k]:.3f} ms{rec}")
    print(f"  direct prototype  recall@10 {res['recall10']['direct prototype']:.3f}; steps (p50 ms): " +
          ", ".join(f"{k} {v:.3f}" for k, v in res["direct_steps_p50_ms"].items()))
    print(f"  walk-free lower bound (every step but the final ranking): p50 {res['direct_lower_bound_p50_ms']:.3f} ms "
          f"= x{res['direct_lower_bound_p50_ms'] / res['p50_ms']['unfiltered']:.2f} unfiltered "
          f"(vidx filtered: x{res['p50_ms']['vidx filtered'] / res['p50_ms']['unfiltered']:.2f})")
    write_json_out(args.json_out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
