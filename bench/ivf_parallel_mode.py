"""Does FAISS's parallel mode (one query spread over the probed lists) change the ratio of
filtered to unfiltered search?

Uses the archive that ``bench/search_latency.py --workdir DIR`` leaves behind (1M vectors, IVF
index, the same queries and folder filters). For each ``IndexIVF.parallel_mode`` it times
``indexer.vectors.search_index``, the vector search the Searcher runs, with and without the
1% folder filter. The metadata join is left out, so the ratio here is that of the search alone.

    .venv/bin/python bench/ivf_parallel_mode.py --workdir /tmp/sb [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    import faiss

    from indexer import vectors as vec
    from indexer.store import IndexStore
    from search.searcher import Filters, Searcher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    data = np.load(os.path.join(args.workdir, "queries.npz"))
    queries, folders, gt, gt_f = data["queries"], data["folders"], data["gt_ids"], data["gt_filtered_ids"]
    with IndexStore(os.path.join(args.workdir, "index"), read_only=True) as store:
        index = store.load_faiss(rebuild_if_stale=False)
        cat = Searcher._load_catalog(store)
    allowed = {f: cat.clip_ids_matching(Filters(path_prefix=f"/archive/f{f:02d}")) for f in set(folders.tolist())}
    ivf = faiss.downcast_index(vec.ivf_of(index))
    print(f"{ivf.ntotal:,} vectors, nlist {ivf.nlist}, faiss threads {faiss.omp_get_max_threads()}")

    def recall(found, truth) -> float:
        return float(np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(found, truth)]))

    print(f"{'round':>5} {'mode':>4} {'unfiltered p50/p99 ms':>22} {'filtered p50/p99 ms':>20} {'ratio p50':>9} "
          f"{'recall':>13}")
    for rnd in range(args.rounds):
        for mode in args.modes:
            ivf.parallel_mode = mode
            lat, lat_f, found, found_f = [], [], [], []
            for q, f in zip(queries, folders):
                t0 = time.perf_counter()
                _, ids = vec.search_index(index, q[None], 50)
                lat.append(time.perf_counter() - t0)
                found.append(ids[0])
                t0 = time.perf_counter()
                _, ids = vec.search_index(index, q[None], 50, allowed[int(f)])
                lat_f.append(time.perf_counter() - t0)
                found_f.append(ids[0])
            u50, u99 = 1000 * np.percentile(lat, 50), 1000 * np.percentile(lat, 99)
            f50, f99 = 1000 * np.percentile(lat_f, 50), 1000 * np.percentile(lat_f, 99)
            print(f"{rnd + 1:>5} {mode:>4} {u50:>13.3f} / {u99:.3f} {f50:>11.3f} / {f99:.3f} {f50 / u50:>8.2f}x "
                  f"{recall(found, gt):.3f} {recall(found_f, gt_f):.3f}", flush=True)


if __name__ == "__main__":
    main()
