"""Reading an index while ``vidx index`` writes it: how long do readers wait, what does it cost the writer?

Starts ``vidx index`` (ViT-B-32, random weights) on the benchmark files (``bench/common.py``
BENCH_FILES) into a fresh index and, while it runs, calls ``vidx status --json`` back to back;
once a video is committed, it alternates ``vidx search "QUERY" --json`` with them. Reports each
reader's wall time (process start to exit, Python start-up included), how many succeeded,
the time the writer waited for readers to let go of the DuckDB file (``reader_wait_s`` of its
summary), and the same index run without readers, for comparison. ``--pause-s`` sleeps
between reader calls (0: back to back, the worst case; readers also take CPU from the writer
on a 2-core machine, which the wall time includes but the wait does not).

Run:   .venv/bin/python bench/read_while_indexing.py [--pause-s 0] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (BENCH_FILES, SHARED_VIDEOS, clean_vidx_env, copy_inputs, machine_info,  # noqa: E402
                          write_json_out)

MODEL = ["--model", "ViT-B-32", "--pretrained", "random"]


def _timed(cmd: list[str], env: dict) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return out.returncode, time.perf_counter() - t0, out.stdout


def _index(videos: Path, db: Path, env: dict, with_readers: bool, query: str, pause_s: float = 0.0) -> dict:
    cmd = [sys.executable, "-m", "vidx", "index", str(videos), "--db", str(db), *MODEL, "--json", "--no-progress"]
    t0 = time.perf_counter()
    writer = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    status_s, search_s, failed, indexed_seen = [], [], 0, 0
    if with_readers:
        while writer.poll() is None:
            if not db.exists():
                time.sleep(0.1)
                continue
            rc, wall, out = _timed([sys.executable, "-m", "vidx", "status", "--db", str(db), "--json"], env)
            if writer.poll() is not None:
                break  # only readers that finished while the writer ran count
            if rc != 0:
                failed += 1
                continue
            status_s.append(wall)
            time.sleep(pause_s)
            indexed_seen = max(indexed_seen, json.loads(out)["videos"]["indexed"])
            if indexed_seen:
                rc, wall, _ = _timed([sys.executable, "-m", "vidx", "search", query, "--db", str(db), "--json",
                                      *MODEL], env)
                if writer.poll() is not None:
                    break
                if rc != 0:
                    failed += 1
                else:
                    search_s.append(wall)
                time.sleep(pause_s)
    out, _ = writer.communicate()
    wall = time.perf_counter() - t0
    summary = json.loads(out)
    return {"writer_wall_s": wall, "writer_rc": writer.returncode, "indexed": summary.get("indexed"),
            "writer_reader_wait_s": summary.get("reader_wait_s"),
            "status_walls_s": status_s, "search_walls_s": search_s, "reader_failures": failed,
            "max_indexed_seen_mid_run": indexed_seen}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--query", default="a person riding a bike")
    ap.add_argument("--pause-s", type=float, default=0.0, help="sleep between reader calls")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    res = {"benchmark": "read_while_indexing", "command_line": " ".join([sys.executable] + sys.argv),
           "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="vidx-rwi-") as tmp:
        videos = Path(tmp) / "videos"
        copy_inputs(BENCH_FILES, SHARED_VIDEOS, videos)
        env = clean_vidx_env(tmp)
        res["alone"] = _index(videos, Path(tmp) / "db-alone", env, False, args.query)
        res["with_readers"] = _index(videos, Path(tmp) / "db-readers", env, True, args.query, args.pause_s)
    r = res["with_readers"]

    def stats(xs: list[float]) -> str:
        return f"n={len(xs)}, median {statistics.median(xs):.2f} s, max {max(xs):.2f} s" if xs else "n=0"

    print(f"vidx index alone: {res['alone']['writer_wall_s']:.2f} s; with readers: {r['writer_wall_s']:.2f} s "
          f"(rc {r['writer_rc']}, {r['indexed']} indexed; waited {r['writer_reader_wait_s']} s for readers; "
          f"readers paused {args.pause_s} s between calls)")
    print(f"  'vidx status' during the run: {stats(r['status_walls_s'])}; up to {r['max_indexed_seen_mid_run']} "
          f"videos seen indexed")
    print(f"  'vidx search' during the run: {stats(r['search_walls_s'])}")
    print(f"  readers that failed: {r['reader_failures']}")
    write_json_out(args.json_out, res)
    return 0 if r["writer_rc"] == 0 and r["reader_failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
