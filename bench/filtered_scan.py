"""Filtered IVF search: FAISS's list walk against the list-free scan of ``indexer.codescan``.

Usage (after ``bench/search_latency.py --workdir DIR`` has written its archive there)::

    .venv/bin/python bench/filtered_scan.py --workdir /tmp/sb [--json-out bench/out/filtered_scan.json]

For filters keeping from 0.2% to 80% of the clips (whole folders of the benchmark archive, as
``vidx search --under`` resolves them), the same single queries (``vectors.search_index``, 160
results as the Searcher fetches for k = 10) are timed twice: with the scan (what vidx does) and
with the scan turned off, so that FAISS walks the chosen lists with an id selector (what vidx
did before). Both score the same allowed vectors; the script checks that they return the same
ids and scores, and reports recall@10 of the 1% filter against the benchmark's exact ground
truth. The unfiltered search of the same queries is timed alongside.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=160)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)

    from indexer import vectors as vec
    from indexer.store import IndexStore
    from search.searcher import Filters, Searcher

    data = np.load(args.workdir / "queries.npz")
    queries, folders, truth = data["queries"][:args.queries], data["folders"][:args.queries], data["gt_filtered_ids"]
    with IndexStore(str(args.workdir / "index"), read_only=True) as store:
        index = store.load_faiss(rebuild_if_stale=False)
        cat = Searcher._load_catalog(store)
    ivf = vec.ivf_of(index)
    ivf.parallel_mode = 1  # as search_index sets for one query
    by_folder = [cat.clip_ids_matching(Filters(path_prefix=f"/archive/f{f:02d}")) for f in range(100)]
    rng = np.random.default_rng(7)

    def union(n: int) -> list[np.ndarray]:
        return [np.sort(np.concatenate([by_folder[j] for j in rng.choice(100, n, replace=False)]))
                for _ in range(10)]

    # Each query's allowed set: its own folder for 1% (as bench/search_latency.py), else one of
    # 10 random unions of n folders (n%), or the first fifth of a folder (0.2%).
    shares = {"0.2%": lambda i: by_folder[int(folders[i])][: len(by_folder[int(folders[i])]) // 5],
              "1%": lambda i: by_folder[int(folders[i])]}
    for n in (5, 20, 80):
        sets = union(n)
        shares[f"{n}%"] = lambda i, sets=sets: sets[i % len(sets)]

    t0 = time.perf_counter()
    vec.search_index(index, queries[:1].copy(), args.k, by_folder[0])
    first_s = time.perf_counter() - t0  # the map, numba's import and its cached kernel
    lmap = vec._list_map(index, ivf)
    reader = lmap.reader
    if reader is None:
        raise SystemExit("this index is not one the scan reads (IVF,SQ8, inner product)")

    def timed(allowed_of, scan: bool):
        lmap.reader = reader if scan else None
        lat, found = [], []
        for i, qv in enumerate(queries):
            q, allowed = qv[None].copy(), allowed_of(i)
            t = time.perf_counter()
            d, ids = vec.search_index(index, q, args.k, allowed)
            lat.append(time.perf_counter() - t)
            found.append((d[0], ids[0]))
        lmap.reader = reader
        return lat, found

    unf = []
    for qv in queries:
        q = qv[None].copy()
        t = time.perf_counter()
        vec.search_index(index, q, args.k)
        unf.append(time.perf_counter() - t)
    res = {"ntotal": int(index.ntotal), "queries": len(queries), "k": args.k, "first_filtered_search_s":
           round(first_s, 3), "unfiltered_ms": _ms(unf), "shares": {}}
    for name, allowed_of in shares.items():
        walk_lat, walk = timed(allowed_of, scan=False)
        scan_lat, scan = timed(allowed_of, scan=True)
        same_ids = float(np.mean([np.array_equal(np.sort(a[1]), np.sort(b[1])) for a, b in zip(walk, scan)]))
        score_diff = float(max(np.abs(a[0] - b[0]).max() for a, b in zip(walk, scan)))
        row = {"allowed_mean": round(float(np.mean([len(allowed_of(i)) for i in range(len(queries))])), 1),
               "walk_ms": _ms(walk_lat), "scan_ms": _ms(scan_lat),
               "scan_vs_unfiltered_p50": round(_ms(scan_lat)["p50"] / _ms(unf)["p50"], 2),
               "queries_with_identical_ids": same_ids, "max_score_difference": score_diff}
        if name == "1%":
            for label, found in (("walk", walk), ("scan", scan)):
                row[f"recall10_{label}"] = round(float(np.mean(
                    [len(set(f[1][:10].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
                     for f, t in zip(found, truth)])), 4)
        res["shares"][name] = row
        print(name, json.dumps(row), flush=True)
    res.update({"cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
                "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())})
    print(json.dumps(res, indent=2))
    write_json_out(args.json_out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
