"""Ray's overhead: the Ray pipeline against the same stages in one process, same files, same cores.

Both runs index the same copied files into fresh indexes with the same model and settings:

* **Ray**: ``python -m vidx index DIR --db A --model M --pretrained P --json --no-progress``
  (embedded Ray: decode tasks on CPU workers, frames through the object store to one model
  actor with all CPUs as torch threads, the driver commits);
* **local**: ``python -m pipelines.local index DIR --db B ...`` (same CLI, same discovery,
  plan and commits; decoding in one thread feeding a bounded queue, the model in the main
  thread with all CPUs as torch threads, see pipelines/local.py).

Wall time is measured from spawn to exit (Python start-up, imports, Ray start-up and
shutdown included: all of it is the price of Ray). ``overhead = (ray - local) / ray``;
target <= 10%, on the median of the runs of each executor. The ``wall_s`` each run reports itself (from its start of indexing, after
imports) is shown too. Before the timed runs, one untimed warm-up run of each executor on
one short file fills the per-user label cache (tag vocabularies) and the page cache.
The two indexes must hold the same clips and (to float noise) the same vectors.

Usage (a quiet machine; `--repeats` runs of each, alternating, medians compared)::

    .venv/bin/python bench/ray_overhead.py
    .venv/bin/python bench/ray_overhead.py --model vidx-tiny --json-out bench/out/ray_overhead.json
    .venv/bin/python bench/ray_overhead.py --copies 5    # 5x the work: Ray's fixed cost vs its marginal cost
    .venv/bin/python bench/ray_overhead.py --stage-costs # model frames/s per core, decode CPU-s per video-s
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (BENCH_FILES, SHARED_VIDEOS, busy_warning, check, clean_vidx_env, copy_inputs, fmt,  # noqa: E402
                          format_table, machine_info, probe_seconds, run_measured)

DEFAULT_FILES = BENCH_FILES  # the throughput benchmark's files (bench/common.py)
TARGET = 0.10


def _cmd(module: str, folder: Path, db: Path, args) -> list[str]:
    return [sys.executable, "-m", module, "index", str(folder), "--db", str(db), "--model", args.model,
            "--pretrained", args.pretrained, "--json", "--no-progress", *args.vidx_args.split()]


def make_copies(files: list[Path], copies: int) -> list[Path]:
    """``copies - 1`` re-muxed copies of each containerised file (distinct bytes: vidx decodes them)."""
    import subprocess

    import imageio_ffmpeg

    out = []
    for f in files:
        if f.suffix.lower() not in (".mp4", ".mov", ".mkv", ".webm", ".avi") or _raw_stream(f):
            continue
        for k in range(1, copies):
            dst = f.with_name(f"{f.stem}-copy{k}{f.suffix}")
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(f),
                            "-map", "0", "-c", "copy", "-metadata", f"title=vidx-copy-{k}", str(dst)],
                           check=True, timeout=120)
            out.append(dst)
    return out


def _raw_stream(path: Path) -> bool:
    import av

    with av.open(str(path)) as c:
        return c.format.name in ("m4v", "h264", "hevc", "mpegvideo")


def stage_costs(files: list[Path], model: str, pretrained: str, max_threads: int) -> dict:
    """In this process, no Ray: what each stage costs, for DESIGN.md "Scaling on paper".

    * model: ``LoadedModel.encode_frames`` (open_clip preprocessing + forward + L2 norm) on 96
      random 224x398 uint8 frames in batches of 32 after a warm-up batch, at 1..max_threads torch
      threads; and the preprocessing alone (PIL, one thread);
    * decode: ``indexer.work.decode_video`` over each file with the job vidx builds for this model
      (short side = model input, 5 s clips, 3 snippets), consumed at once (no backpressure), for
      the default (exact snippets + shot detection, every frame decoded) and ``keyframe`` sampling
      without shots: CPU seconds (``time.process_time``) per video second, frames out per video second.
    """
    import time

    import numpy as np

    from indexer.discover import fingerprint_file
    from indexer.model import LoadedModel, resolve_model
    from indexer.types import VideoFile
    from indexer.work import DecodeOutcome, VideoJob, decode_video

    spec = resolve_model(model, pretrained)
    frames = np.random.default_rng(0).integers(0, 255, size=(96, 224, 398, 3), dtype=np.uint8)
    out: dict = {"model": {}, "decode": {}}
    for threads in range(1, max_threads + 1):
        m = LoadedModel(spec, threads=threads)
        m.encode_frames(frames[:32], 32)
        t0 = time.perf_counter()
        m.encode_frames(frames, 32)
        out["model"][f"{threads}_threads_frames_per_s"] = round(len(frames) / (time.perf_counter() - t0), 2)
        if threads == 1:
            t0 = time.perf_counter()
            m.preprocess_frames(frames)
            out["model"]["preprocess_only_frames_per_s_1_thread"] = round(len(frames) / (time.perf_counter() - t0), 1)
    for mode, shots, sampling in (("exact+shots", True, "exact"), ("keyframe", False, "keyframe")):
        video_s = cpu_s = n_frames = 0.0
        for f in files:
            st = f.stat()
            job = VideoJob(VideoFile(str(f), st.st_size, st.st_mtime_ns), fingerprint_file(str(f)), 5.0, 3,
                           sampling, spec.image_size, 120.0, 48, shots=shots)
            c0 = time.process_time()
            for item in decode_video(job):
                if isinstance(item, np.ndarray):
                    n_frames += len(item)
                elif isinstance(item, DecodeOutcome) and item.probe is not None:
                    video_s += item.probe.duration_s
            cpu_s += time.process_time() - c0
        out["decode"][mode] = {"video_s": round(video_s, 1), "cpu_s_per_video_s": round(cpu_s / video_s, 4),
                               "frames_per_video_s": round(n_frames / video_s, 3)}
    return out


def _summary(run) -> dict:
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(run.cmd[:4])} failed (rc={run.returncode}):\n{run.stderr_tail()}")
    return json.loads(run.stdout[run.stdout.find("{"):])


def _vectors(db: Path) -> dict:
    import duckdb
    import numpy as np

    con = duckdb.connect(str(db / "vidx.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT v.path, c.idx, c.start_s, c.end_s, cv.vector FROM clips c JOIN videos v "
                           "USING (video_id) JOIN clip_vectors cv USING (clip_id)").fetchall()
    finally:
        con.close()
    return {(Path(p).name, i, round(s, 6), round(e, 6)): np.asarray(v, np.float32) for p, i, s, e, v in rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", nargs="+", default=list(DEFAULT_FILES), help="names in the shared corpus or paths")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="random")
    ap.add_argument("--vidx-args", default="", help="extra arguments for both runs")
    ap.add_argument("--order", choices=("ray-first", "local-first"), default="ray-first")
    ap.add_argument("--repeats", type=int, default=3,
                    help="measured runs of each executor, alternating; medians are compared (default 3)")
    ap.add_argument("--copies", type=int, default=1,
                    help="index K re-muxed copies of each file (ffmpeg -c copy, another title: other bytes, same "
                         "frames) to scale the workload; raw elementary streams are not copied")
    ap.add_argument("--stage-costs", action="store_true",
                    help="instead: measure model frames/s per thread count and decode CPU-s per video-s, no Ray")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    if args.stage_costs:
        with tempfile.TemporaryDirectory(prefix="vidx-stages-") as tmp:
            files = copy_inputs(args.files, SHARED_VIDEOS, tmp)
            costs = stage_costs(files, args.model, args.pretrained, os.cpu_count() or 1)
        costs.update(machine=machine_info(), files=[p.name for p in files], model_name=args.model,
                     pretrained=args.pretrained, command=" ".join([sys.executable, *sys.argv]))
        print(json.dumps({k: costs[k] for k in ("model", "decode")}, indent=2))
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(costs, indent=2, default=str))
        return 0

    info = machine_info()
    warning = busy_warning(info)
    scratch = Path(tempfile.mkdtemp(prefix="vidx-rayoh-"))
    try:
        folder = scratch / "videos"
        files = copy_inputs(args.files, SHARED_VIDEOS, folder)
        files += make_copies(files, args.copies)
        seconds = sum(probe_seconds(files).values())
        env = clean_vidx_env(scratch)
        env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="vxo", dir="/tmp")
        # Untimed warm-up of both executors: label cache, page cache, Ray's first start.
        warm = scratch / "warm"
        copy_inputs([min(files, key=lambda p: p.stat().st_size)], folder, warm)
        for module in ("pipelines.local", "vidx"):
            _summary(run_measured(_cmd(module, warm, scratch / f"warm-{module}", args), env=env, cwd=REPO_ROOT))

        runs: dict[str, list] = {"ray": [], "local": []}
        order = ("ray", "local") if args.order == "ray-first" else ("local", "ray")
        for rep in range(args.repeats):
            for name in order:
                module = "vidx" if name == "ray" else "pipelines.local"
                print(f"[bench] {name} run {rep + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
                index = scratch / f"index-{name}-{rep}"
                run = run_measured(_cmd(module, folder, index, args), env=env, cwd=REPO_ROOT)
                runs[name].append((run, _summary(run)))
                if rep:
                    shutil.rmtree(index, ignore_errors=True)

        ray_vecs, local_vecs = _vectors(scratch / "index-ray-0"), _vectors(scratch / "index-local-0")
        same_clips = sorted(ray_vecs) == sorted(local_vecs)
        import numpy as np

        max_diff = max((float(np.abs(ray_vecs[k] - local_vecs[k]).max()) for k in ray_vecs), default=0.0) \
            if same_clips else None
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def median_run(name: str):
        ordered = sorted(runs[name], key=lambda r: r[0].wall_s)
        return ordered[len(ordered) // 2]

    ray_run, ray_s = median_run("ray")
    local_run, local_s = median_run("local")
    overhead = (ray_run.wall_s - local_run.wall_s) / ray_run.wall_s
    inner = (ray_s["wall_s"] - local_s["wall_s"]) / ray_s["wall_s"]
    rows = []
    for name in ("ray", "local"):
        for i, (run, s) in enumerate(runs[name]):
            rows.append([f"{name} #{i + 1}", f"{run.wall_s:.1f}", f"{s['wall_s']:.1f}", s["indexed"], s["failed"],
                         s["clips_added"], s["frames_embedded"], f"{seconds / run.wall_s:.2f}x",
                         f"{run.peak_rss_gib:.2f}"])
    print(f"{len(files)} files, {seconds:.1f} s of video, model {args.model} ({args.pretrained}), "
          f"{info['cpu_affinity']} CPUs ({info['cpu_model']})")
    print(format_table(["executor", "wall s (process)", "wall s (reported)", "indexed", "failed", "clips",
                        "frames", "realtime", "peak RSS GiB (tree)"], rows))
    print(f"same clips: {same_clips}; max |vector difference|: {fmt(max_diff, 6) if max_diff is not None else 'n/a'}")
    print(f"medians: ray {ray_run.wall_s:.1f} s, local {local_run.wall_s:.1f} s")
    c = check("Ray overhead (ray - local) / ray, median process wall", round(overhead, 4), "<=", TARGET)
    print(f"{c['verdict']}: {c['name']} = {overhead:.1%} (target <= {TARGET:.0%}); "
          f"on the reported wall_s (after imports): {inner:.1%}")
    if warning:
        print(warning)
    if args.json_out:
        report = {"machine": info, "warning": warning, "files": [p.name for p in files], "video_s": seconds,
                  "copies": args.copies,
                  "model": args.model, "pretrained": args.pretrained, "order": args.order,
                  "repeats": args.repeats,
                  "runs": {name: [{"wall_s": r.wall_s, "reported_wall_s": sm["wall_s"], "peak_gib": r.peak_rss_gib}
                                  for r, sm in runs[name]] for name in runs},
                  "ray": {"wall_s": ray_run.wall_s, "reported_wall_s": ray_s["wall_s"], "peak_gib": ray_run.peak_rss_gib,
                          "summary": ray_s},
                  "local": {"wall_s": local_run.wall_s, "reported_wall_s": local_s["wall_s"],
                            "peak_gib": local_run.peak_rss_gib, "summary": local_s},
                  "overhead": overhead, "overhead_reported_wall": inner, "same_clips": same_clips,
                  "max_vector_diff": max_diff, "check": c, "command": " ".join([sys.executable, *sys.argv])}
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
