"""Moderation scan throughput and NudeNet's false-positive rate on benign footage.

What one run measures (in this process, with ``pipelines.moderate.scan``, the function
behind ``vidx moderate``):

1. **Corpus index**: the whole shared corpus (``/work/shared/videos``, all benign) copied to
   a temp dir and indexed with ``pipelines.index.index_paths`` (``--model``/``--pretrained``,
   default ViT-B-32 with random weights: same vector size and cost as the trained model;
   ``--db`` reuses an existing index instead).
2. **Embedding-only scan** of that index with the default policy (``--no-nudenet``): the
   first scan (prompts embedded by the index's model, then cached in the index) and a
   forced ``--rescan`` with cached prompts (what every nightly scan after the first costs).
   Wall time of ``scan()`` (locks, DuckDB open, counting, run records included) and
   clips/s of the scoring pass (stream vectors via Arrow, one matrix multiply per batch,
   flags + scan marks committed per batch).
3. **NudeNet scan** of the same index (``--no-embedding --nudenet``): snippet frames
   re-decoded from the files on Ray CPU workers and scored by NudeNet's ONNX detector.
   Wall time, clips/s, frames. The policy is the default one with the NudeNet threshold
   lowered to 0.2 (NudeNet's own floor; the work done is the same), so one pass yields
   the **false-positive rate** (flagged clips / scanned clips; every clip of this corpus is
   benign) at every threshold from 0.2 up; the default policy's threshold is marked.
4. **Synthetic 1M clips**: an index of ``--synthetic-clips`` clips (512-d vectors: ~99.9%
   near a benign prompt, ~0.1% near a positive one) written straight into DuckDB, then an
   embedding-only scan of all of them (prompts from a stand-in encoder: the pass is what is
   timed). Target: >= 50,000 clips/s.

Targets (issue 5): embedding-only scan of already-indexed clips >= 50,000 clips/s; NudeNet
false positives <= 2% of clips. Results are printed as a table; ``--json-out FILE`` writes
JSON with the machine info and the exact command.

    .venv/bin/python bench/moderation.py                        # everything (~3-5 min)
    .venv/bin/python bench/moderation.py --synthetic-clips 0    # corpus only
    .venv/bin/python bench/moderation.py --skip-corpus          # synthetic only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import SHARED_VIDEOS, busy_warning, check, format_table, machine_info  # noqa: E402

FP_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _settings(db: str, model: str, pretrained: str):
    from indexer.config import load_settings

    return load_settings({"db": db, "model": model, "pretrained": pretrained}, environ={})


def bench_corpus(args, work: Path) -> dict:
    from indexer.moderation import load_policy, nudenet_unavailable
    from pipelines.index import index_paths
    from pipelines.moderate import ScanOptions, scan
    from pipelines.ray_runtime import ray_session

    out: dict = {}
    db = args.db or str(work / "corpus-index")
    settings = _settings(db, args.model, args.pretrained)
    with ray_session():
        if not args.db:
            videos = work / "corpus"
            shutil.copytree(SHARED_VIDEOS, videos)
            t = time.perf_counter()
            summary = index_paths([str(videos)], settings, show_progress=False)
            out["index"] = {"wall_s": round(time.perf_counter() - t, 2), "videos": summary.indexed,
                            "failed_or_skipped": summary.failed + summary.skipped, "clips": summary.clips_added,
                            "video_hours": round(summary.video_seconds / 3600, 3)}
            print(f"indexed corpus: {out['index']}", file=sys.stderr)

        def timed(options):
            t = time.perf_counter()
            s = scan(settings, options)
            return s, time.perf_counter() - t

        s, wall = timed(ScanOptions(nudenet=False))
        out["embedding_first"] = {"wall_s": round(wall, 3), "prompt_s": round(s.prompt_s, 3),
                                  "pass_s": round(s.embedding_s, 4), "clips": s.embedding_scanned,
                                  "clips_per_s_pass": round(s.embedding_clips_per_s),
                                  "clips_per_s_wall": round(s.embedding_scanned / wall), "new_flags": s.new_flags}
        s, wall = timed(ScanOptions(nudenet=False, rescan=True))
        out["embedding_cached"] = {"wall_s": round(wall, 3), "prompt_s": round(s.prompt_s, 3),
                                   "pass_s": round(s.embedding_s, 4), "clips": s.embedding_scanned,
                                   "clips_per_s_pass": round(s.embedding_clips_per_s),
                                   "clips_per_s_wall": round(s.embedding_scanned / wall)}
        s, wall = timed(ScanOptions(nudenet=False))
        out["embedding_nothing_due"] = {"wall_s": round(wall, 3), "clips": s.embedding_scanned}

        reason = nudenet_unavailable()
        if reason:
            out["nudenet"] = {"skipped": reason}
            return out
        default = load_policy()
        text = Path(default.source).read_text()
        sweep = work / "nudenet-sweep.toml"
        sweep.write_text(text.replace(f"threshold = {default.nudenet.threshold}", "threshold = 0.2")
                         if f"threshold = {default.nudenet.threshold}\nclasses" in text else text)
        s, wall = timed(ScanOptions(policy_path=str(sweep), embedding=False, nudenet=True))
        scores = np.array([f["score"] for f in s.flags if f["detector"] == "nudenet"])
        n = max(s.nudenet_scanned, 1)
        out["nudenet"] = {
            "wall_s": round(wall, 2), "pass_s": round(s.nudenet_s, 2), "clips": s.nudenet_scanned,
            "frames": s.nudenet_frames, "clips_per_s": round(s.nudenet_scanned / wall, 2),
            "frames_per_s": round(s.nudenet_frames / wall, 2), "errors": s.errors,
            "default_threshold": default.nudenet.threshold,
            "fp_rate": {f"{t:.1f}": round(float((scores >= t).sum()) / n, 4) for t in FP_THRESHOLDS},
            "fp_clips": {f"{t:.1f}": int((scores >= t).sum()) for t in FP_THRESHOLDS},
            "flagged_at_default": [
                {"path": os.path.basename(f["path"]), "start": f["start"], "score": f["score"],
                 "class": f["evidence"].get("nudenet", {}).get("class")}
                for f in s.flags if f["score"] >= default.nudenet.threshold],
        }
    return out


def _unit(seed_text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def fake_encoder(dim: int):
    return lambda texts: np.stack([_unit(t, dim) for t in texts])


def build_synthetic(db: str, n_clips: int, dim: int, per_video: int = 1000, chunk: int = 100_000) -> float:
    """An index of n_clips clips straight in DuckDB (the indexer's schema), vectors near the
    default policy's prompts. Returns the seconds it took."""
    import pyarrow as pa

    from indexer.moderation import load_policy
    from indexer.store import IndexStore

    t0 = time.perf_counter()
    policy = load_policy()
    enc = fake_encoder(dim)
    # Prompt vectors as the scan will see them: each prompt through every template, averaged.
    def prompt_vec(p):
        v = enc([t.format(p) for t in policy.templates]).mean(axis=0)
        return v / np.linalg.norm(v)

    benign = np.stack([prompt_vec(p) for p in policy.common_negatives])
    bad = np.stack([prompt_vec(p) for c in policy.categories for p in c.positives])
    rng = np.random.default_rng(0)
    model_id = f"ViT-B-32|synthetic:{dim}"
    n_videos = (n_clips + per_video - 1) // per_video
    with IndexStore(db) as store:
        store.register_model(model_id, "ViT-B-32", "synthetic", dim, 224, 100.0)
        store.con.execute(
            "INSERT INTO videos (video_id, path, fingerprint, size_bytes, mtime_ns, status, duration_s, model_id, "
            "clip_s, snippets, sampling, first_seen_at, indexed_at) SELECT i, '/synthetic/video_' || i || '.mp4', "
            "'fp' || i, 1000000, 0, 'indexed', ?, ?, 5.0, 3, 'exact', now(), now() FROM range(1, ? + 1) t(i)",
            [per_video * 5.0, model_id, n_videos])
        for start in range(0, n_clips, chunk):
            n = min(chunk, n_clips - start)
            ids = np.arange(start + 1, start + n + 1, dtype=np.int64)
            idx = (ids - 1) % per_video
            base = benign[rng.integers(0, len(benign), n)]
            planted = rng.random(n) < 0.001
            base[planted] = bad[rng.integers(0, len(bad), planted.sum())]
            mat = 0.6 * base + 0.8 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
            mat /= np.linalg.norm(mat, axis=1, keepdims=True)
            starts = idx * 5.0
            clips = pa.table({
                "clip_id": ids, "video_id": (ids - 1) // per_video + 1, "idx": idx.astype(np.int32),
                "start_s": starts, "end_s": starts + 5.0,
                "snippet_times_s": pa.ListArray.from_arrays(
                    pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32)),
                    pa.array(np.stack([starts + 5 / 6, starts + 2.5, starts + 25 / 6], 1).reshape(-1)))})
            vectors = pa.table({
                "clip_id": ids, "model_id": pa.array([model_id] * n),
                "vector": pa.ListArray.from_arrays(pa.array(np.arange(0, dim * n + 1, dim, dtype=np.int32)),
                                                   pa.array(mat.reshape(-1)))})
            store.con.execute("BEGIN TRANSACTION")
            store._insert_arrow("clips", clips)
            store._insert_arrow("clip_vectors", vectors)
            store.con.execute("COMMIT")
            print(f"  synthetic index: {start + n:,} / {n_clips:,} clips", file=sys.stderr)
        store.con.execute("CHECKPOINT")
    return time.perf_counter() - t0


def bench_synthetic(args, work: Path) -> dict:
    from pipelines.moderate import ScanOptions, scan

    db = str(work / "synthetic-index")
    build_s = build_synthetic(db, args.synthetic_clips, args.synthetic_dim)
    settings = _settings(db, "ViT-B-32", "synthetic")
    enc = fake_encoder(args.synthetic_dim)
    import resource

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    s = scan(settings, ScanOptions(nudenet=False), text_encoder=enc)
    wall = time.perf_counter() - t
    first = {"wall_s": round(wall, 2), "pass_s": round(s.embedding_s, 2), "clips": s.embedding_scanned,
             "clips_per_s_pass": round(s.embedding_clips_per_s), "clips_per_s_wall": round(s.embedding_scanned / wall),
             "new_flags": s.new_flags, "build_s": round(build_s, 1), "dim": args.synthetic_dim,
             "peak_rss_gib": round(max(rss0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 2**20, 2)}
    t = time.perf_counter()
    s = scan(settings, ScanOptions(nudenet=False), text_encoder=enc)
    first["nothing_due_wall_s"] = round(time.perf_counter() - t, 3)
    return first


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="random")
    p.add_argument("--db", help="scan this existing index instead of indexing the corpus")
    p.add_argument("--skip-corpus", action="store_true")
    p.add_argument("--synthetic-clips", type=int, default=1_000_000)
    p.add_argument("--synthetic-dim", type=int, default=512)
    p.add_argument("--json-out")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (indexes) for inspection")
    args = p.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s: %(message)s")
    logging.getLogger("indexer.model").setLevel(logging.ERROR)  # the random-weights warning is expected
    info = machine_info()
    warn = busy_warning(info)
    if warn:
        print(warn, file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="vidx-bench-moderation-"))
    results: dict = {"command": shlex.join([sys.executable, *sys.argv]), "machine": info}
    try:
        if not args.skip_corpus:
            results["corpus"] = bench_corpus(args, work)
        if args.synthetic_clips > 0:
            results["synthetic"] = bench_synthetic(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)

    rows, checks = [], []
    c = results.get("corpus", {})
    for key, name in (("embedding_first", "corpus, embedding-only, first scan (prompts embedded)"),
                      ("embedding_cached", "corpus, embedding-only, --rescan (prompts cached)")):
        if key in c:
            r = c[key]
            rows.append([name, r["clips"], r["wall_s"], r["clips_per_s_wall"], r["clips_per_s_pass"]])
    if "embedding_nothing_due" in c:
        rows.append(["corpus, embedding-only, nothing due", 0, c["embedding_nothing_due"]["wall_s"], "", ""])
    nn = c.get("nudenet", {})
    if "clips" in nn:
        rows.append([f"corpus, NudeNet ({nn['frames']} frames)", nn["clips"], nn["wall_s"], nn["clips_per_s"], ""])
    syn = results.get("synthetic")
    if syn:
        rows.append([f"synthetic {syn['clips']:,} clips, {syn['dim']}-d, embedding-only", syn["clips"], syn["wall_s"],
                     syn["clips_per_s_wall"], syn["clips_per_s_pass"]])
        checks.append(check("embedding-only scan, clips/s (synthetic, whole scan() wall)", syn["clips_per_s_wall"],
                            ">=", 50_000))
    print(format_table(["scan", "clips", "wall s", "clips/s (wall)", "clips/s (pass)"], rows))
    if "fp_rate" in nn:
        print()
        print(format_table(["NudeNet threshold", "flagged clips", "false-positive rate"],
                           [[t + (" (default)" if float(t) == nn["default_threshold"] else ""), nn["fp_clips"][t],
                             f"{100 * r:.2f}%"] for t, r in nn["fp_rate"].items()]))
        default_key = f"{nn['default_threshold']:.1f}"
        checks.append(check("NudeNet false-positive rate at the default threshold", nn["fp_rate"].get(default_key),
                            "<=", 0.02))
    elif "skipped" in nn:
        print(f"NudeNet: skipped: {nn['skipped']}")
    if checks:
        print()
        print(format_table(["target", "value", "", "target", "verdict"],
                           [[x["name"], x["value"], x["op"], x["target"], x["verdict"]] for x in checks]))
    results["checks"] = checks
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
