"""Indexing throughput of ``vidx index`` against the model's own cost and a naive pipeline.

What one run measures, on a fixed list of real clips (copied to a temp dir first):

1. **vidx, default settings**: ``python -m vidx index DIR --db NEW --model M --pretrained P
   --json --no-progress [--vidx-args ...]`` as a subprocess, with no ``VIDX_*`` variables
   and no user config file. Wall time from spawn to exit (Python start-up, Ray start-up,
   model load and shutdown included), and peak memory: the summed RSS of the process and
   all its descendants (Ray's gcs/raylet/workers), sampled every 0.2 s. Frames embedded,
   video seconds and clips come from vidx's ``--json`` summary.
2. **model-only time**: in this process, the same model loaded with
   ``indexer.model.LoadedModel(resolve_model(M, P), threads=T)`` (T = the threads vidx gives its
   one model actor: all CPUs), timing ``encode_frames`` (open_clip preprocessing + forward
   pass + L2 norm), in the precision vidx's image tower runs in (``image_precision``: bf16 on a
   CPU with native bfloat16, else fp32), on exactly as many random uint8 frames as vidx embedded, at a typical
   decoded size (short side = model input size, 16:9, e.g. 224x398x3), in vidx's batch size
   (32), after one warm-up batch. ``overhead = vidx wall / model-only time``: 1.0 would mean
   decoding, Ray, I/O and start-up cost nothing beyond the model.
3. **naive pipeline**, the one a user would script, in a subprocess of this script
   (``--naive-only``) so its memory is measured on its own: per file, the imageio-ffmpeg
   binary with ``-vf fps=1,scale=S:S -f rawvideo -pix_fmt rgb24 pipe:1``; frames read from
   the pipe, normalised with open_clip's mean/std in torch, ``encode_image`` in batches of
   32 (``torch.set_num_threads(T)``), L2-normalised, added to a ``faiss.IndexFlatIP``
   (written to disk at the end). Same model, loaded by the same loader, in float32 as open_clip
   loads it (``--naive-precision bf16`` for comparison). Same wall-time and
   memory measurement. ``speedup = vidx throughput / naive throughput`` in video seconds
   per wall second (each pipeline's own sampling: vidx embeds 3 frames per 5 s clip, the
   naive one 1 frame per second; the throughput compares the time to index the videos).
4. **no-change re-run**: the same vidx command again on the same folder and index
   (``--rerun-repeats`` times, the median is reported). With ``--rerun-corpus``, also a
   copy of the whole shared corpus is indexed into a fresh index first, and the no-change
   re-run of *that* is timed: the ≤ 3 s target is about the whole corpus.

Targets, printed as PASS/FAIL: overhead ≤ 1.15, speedup ≥ 1.5, re-run ≤ 3 s, peak memory
(vidx, summed RSS) ≤ 6 GiB. Results go to stdout as a table, and with ``--json-out FILE``
as JSON (machine info, date and the exact command line included).

Run it on a quiet machine (it warns when the load average says otherwise)::

    .venv/bin/python bench/index_throughput.py                       # the real measurement
    .venv/bin/python bench/index_throughput.py --rerun-corpus --json-out bench/out/throughput.json
    .venv/bin/python bench/index_throughput.py --vidx-args "--sampling keyframe"
    .venv/bin/python bench/index_throughput.py --model vidx-tiny --files t2vz_fox.mp4 v_Biking_g01_c01.mp4

``--pretrained random`` (the default) costs exactly what trained weights cost, and needs no
download. Exit status: 0 when everything was measured (``--strict``: and every target
passed), 1 when a target failed under ``--strict``, 2 when a run failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `bench`, `indexer`, `vidx` importable
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (BENCH_FILES, SHARED_VIDEOS, MeasuredRun, busy_warning, check, clean_vidx_env,  # noqa: E402
                          copy_inputs, fmt, format_table, machine_info, probe_seconds, run_measured)

DEFAULT_FILES = BENCH_FILES

TARGET_OVERHEAD = 1.15
TARGET_SPEEDUP = 1.5
TARGET_RERUN_S = 3.0
TARGET_PEAK_GIB = 6.0


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- arguments

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring for what is measured.")
    p.add_argument("--files", nargs="+", default=list(DEFAULT_FILES),
                   help="video file names in --videos-dir, or absolute paths (default: a fixed ~305 s set)")
    p.add_argument("--videos-dir", default=str(SHARED_VIDEOS), help="where --files live (read-only; copied)")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    p.add_argument("--pretrained", default="random", help="weights (default random: same cost, no download)")
    p.add_argument("--vidx-args", default="", metavar="ARGS",
                   help="extra options for every `vidx index` run, one shell-quoted string, "
                        "e.g. \"--sampling keyframe\"")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for model-only and naive (default: what vidx gives its model actor, "
                        "i.e. all CPUs / embed_workers = 2 on a 2-core machine)")
    p.add_argument("--frame-size", default="", metavar="HxW",
                   help="decoded frame size for model-only timing (default: S x round(S*16/9), S = model input)")
    p.add_argument("--model-only-repeats", type=int, default=1,
                   help="time the model-only pass this many times and keep the fastest (default 1)")
    p.add_argument("--naive-fps", type=float, default=1.0, help="frames per second the naive pipeline embeds")
    p.add_argument("--naive-precision", choices=("fp32", "bf16"), default="fp32",
                   help="the naive pipeline's image tower: fp32 (default: as open_clip loads a model, what a "
                        "user's script gets) or bf16 (vidx's choice on CPUs with native bfloat16)")
    p.add_argument("--rerun-repeats", type=int, default=3, help="no-change re-runs to time (median reported)")
    p.add_argument("--rerun-corpus", action="store_true",
                   help="also index a copy of the whole corpus, then time its no-change re-run (slow)")
    p.add_argument("--corpus-dir", default="", help="corpus for --rerun-corpus (default: --videos-dir)")
    p.add_argument("--skip-naive", action="store_true", help="leave out the naive pipeline")
    p.add_argument("--json-out", metavar="FILE", help="also write the results as JSON here")
    p.add_argument("--workdir", help="parent folder for the temporary copies and indexes (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="limit per measured run")
    p.add_argument("--sample-interval-s", type=float, default=0.2, help="RSS sampling period")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    # Internal: the naive pipeline, run in a child process so its memory is measured alone.
    p.add_argument("--naive-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--naive-out", help=argparse.SUPPRESS)
    p.add_argument("--naive-index", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=32, help=argparse.SUPPRESS)
    return p


@dataclasses.dataclass(frozen=True)
class EffectiveVidx:
    """The settings vidx will actually use for the measured command (parsed by vidx itself)."""

    batch_size: int
    model_threads: int
    settings: dict
    precision: str = "fp32"  # what the image tower runs in (indexer.model.image_precision)


def effective_vidx_settings(model: str, pretrained: str, extra: list[str], env: dict) -> EffectiveVidx:
    from indexer.config import Settings, load_settings
    from vidx.cli import build_parser as vidx_parser

    ns = vidx_parser().parse_args(["index", "_", "--db", "_", "--model", model, "--pretrained", pretrained] + extra)
    names = {f.name for f in dataclasses.fields(Settings)}
    cli = {k: v for k, v in vars(ns).items() if k in names and v is not None}
    settings = load_settings(cli, config_path=ns.config, environ=env)
    # As pipelines/index.py: torch_threads, else the cluster's CPUs shared by the model actors.
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // settings.embed_workers)
    data = dataclasses.asdict(settings)
    data.pop("db", None)
    from indexer.model import image_precision

    precision = image_precision(settings.precision, "cpu")
    return EffectiveVidx(settings.batch_size, threads, data, precision)


# --------------------------------------------------------------------------- 1 + 4: vidx runs

def vidx_command(videos: Path, db: Path, args, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "vidx", "index", str(videos), "--db", str(db), "--model", args.model,
            "--pretrained", args.pretrained, "--json", "--no-progress"] + extra


def run_vidx(cmd: list[str], env: dict, args, what: str) -> tuple[MeasuredRun, dict]:
    run = run_measured(cmd, env=env, cwd=REPO_ROOT, interval_s=args.sample_interval_s, timeout_s=args.timeout_s)
    if run.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {run.returncode}): {shlex.join(cmd)}\n{run.stderr_tail()}")
    try:
        summary = json.loads(run.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"{what}: no JSON summary on stdout:\n{run.stdout[-2000:]}\n{run.stderr_tail()}") from None
    return run, summary


def timed_reruns(cmd: list[str], env: dict, args, what: str) -> dict:
    walls, summaries = [], []
    for i in range(max(1, args.rerun_repeats)):
        run, summary = run_vidx(cmd, env, args, f"{what} #{i + 1}")
        walls.append(run.wall_s)
        summaries.append(summary)
        if summary.get("indexed") or summary.get("frames_embedded"):
            log(f"WARNING: {what} #{i + 1} was not a no-change run: indexed {summary.get('indexed')}")
    last = summaries[-1]
    return {"wall_s": statistics.median(walls), "walls_s": [round(w, 3) for w in walls],
            "internal_wall_s": last.get("wall_s"), "discovered": last.get("discovered"),
            "unchanged": last.get("unchanged"), "indexed": last.get("indexed"), "failed": last.get("failed"),
            "command": shlex.join(cmd)}


# --------------------------------------------------------------------------- 2: model-only

def model_only_seconds(model: str, pretrained: str, threads: int, batch_size: int, counts: list[int],
                       frame_size: str, repeats: int = 1, precision: str = "fp32") -> dict:
    """Time LoadedModel.encode_frames on exactly N random frames, for each N in counts (best of repeats),
    in ``precision`` (vidx's own, so that overhead compares like with like)."""
    import numpy as np

    from indexer.model import LoadedModel, resolve_model

    t0 = time.perf_counter()
    lm = LoadedModel(resolve_model(model, pretrained), threads=threads, precision=precision)
    load_s = time.perf_counter() - t0
    if frame_size:
        h, w = (int(x) for x in frame_size.lower().split("x"))
    else:
        h, w = lm.image_size, round(lm.image_size * 16 / 9)
    rng = np.random.default_rng(0)
    # Warm-up, untimed: a full batch and every tail-batch shape (a new shape costs a one-off plan).
    for n in {batch_size} | {c % batch_size for c in counts if c % batch_size}:
        lm.encode_frames(rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), batch_size)
    times = {}
    for n in sorted(set(counts)):
        frames = rng.integers(0, 256, (max(n, 0), h, w, 3), dtype=np.uint8)
        best = float("inf")
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            lm.encode_frames(frames, batch_size)
            best = min(best, time.perf_counter() - t)
        times[n] = best if n > 0 else 0.0
        del frames
    return {"load_s": load_s, "frame_hwc": [h, w, 3], "threads": threads, "batch_size": batch_size,
            "repeats": repeats, "precision": lm.precision, "seconds_by_frames": times}


# --------------------------------------------------------------------------- 3: naive pipeline

def naive_pipeline(paths: list[str], model: str, pretrained: str, threads: int, batch_size: int, fps: float,
                   index_path: str | None, precision: str = "fp32") -> dict:
    """What a user would script: ffmpeg -> raw RGB pipe -> normalise -> encode_image -> FlatIP, in
    float32 as open_clip loads a model (``precision`` bf16: the image tower in bfloat16, for comparison)."""
    t_start = time.perf_counter()  # imports included, as they are in vidx's own wall_s
    import faiss
    import imageio_ffmpeg
    import numpy as np
    import open_clip
    import torch

    from indexer.model import LoadedModel, resolve_model

    torch.set_num_threads(threads)
    lm = LoadedModel(resolve_model(model, pretrained), threads=threads, precision=precision)
    net, size = lm.model, lm.image_size
    cfg = open_clip.get_model_preprocess_cfg(net)
    mean = torch.tensor(cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std") or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    index = faiss.IndexFlatIP(lm.dim)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    frame_bytes = size * size * 3
    load_s = time.perf_counter() - t_start

    encode_s = 0.0
    files = []
    for path in paths:
        cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", path,
               "-vf", f"fps={fps:g},scale={size}:{size}", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
        n_file = 0
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
            while True:
                buf = proc.stdout.read(frame_bytes * batch_size)
                n = len(buf) // frame_bytes
                if n == 0:
                    break
                batch = np.frombuffer(buf, np.uint8, n * frame_bytes).reshape(n, size, size, 3)
                t = time.perf_counter()
                x = torch.from_numpy(batch.copy()).permute(0, 3, 1, 2).float().div_(255)
                x = ((x - mean) / std).to(lm.image_dtype)
                with torch.inference_mode():
                    feats = torch.nn.functional.normalize(net.encode_image(x).float(), dim=-1)
                index.add(np.ascontiguousarray(feats.numpy(), dtype=np.float32))
                encode_s += time.perf_counter() - t
                n_file += n
            proc.stdout.close()
            rc = proc.wait()
            err.seek(0)
            message = err.read().decode(errors="replace").strip().splitlines()
        files.append({"path": path, "frames": n_file, "ffmpeg_rc": rc, "error": message[-1] if message else ""})
    if index_path:
        faiss.write_index(index, index_path)
    return {"frames_embedded": int(index.ntotal), "precision": lm.precision, "load_s": load_s, "encode_s": encode_s,
            "internal_wall_s": time.perf_counter() - t_start, "image_size": size, "fps": fps, "files": files}


def naive_main(args) -> int:
    result = naive_pipeline(args.files, args.model, args.pretrained, args.threads or (os.cpu_count() or 1),
                            args.batch_size, args.naive_fps, args.naive_index, args.naive_precision)
    with open(args.naive_out, "w") as fh:
        json.dump(result, fh)
    return 0


# --------------------------------------------------------------------------- the benchmark

def per_s(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def run_benchmark(args) -> int:
    info = machine_info()
    warn = busy_warning(info)
    if warn:
        log(warn)
    extra = shlex.split(args.vidx_args)
    work = Path(tempfile.mkdtemp(prefix="vidx-bench-", dir=args.workdir))
    env = clean_vidx_env(work)
    try:
        eff = effective_vidx_settings(args.model, args.pretrained, extra, env)
        threads = args.threads or eff.model_threads
        videos = work / "videos"
        copies = copy_inputs(args.files, args.videos_dir, videos)
        durations = probe_seconds(copies)
        total_s = sum(durations.values())
        log(f"{len(copies)} files, {total_s:.1f} s of video, copied to {videos}")

        # 0. Warm-up on one file into a throwaway index: the per-user caches (tag vocabulary
        # text vectors, computed once per model and machine) and the OS file cache are then
        # as a user's second and later runs find them; a user's very first run pays extra.
        warm = work / "warm"
        warm.mkdir()
        first = sorted(copies)[0]
        shutil.copy2(first, warm / Path(first).name)
        run_vidx(vidx_command(warm, work / "warm-db", args, extra), env, args, "warm-up")

        # 1. vidx with default settings.
        cmd = vidx_command(videos, work / "db", args, extra)
        log(f"vidx index: {shlex.join(cmd)}")
        v_run, v_sum = run_vidx(cmd, env, args, "vidx index")
        log(f"vidx index: {v_run.wall_s:.2f} s wall, {v_sum['frames_embedded']} frames, "
            f"peak {v_run.peak_rss_gib:.2f} GiB")
        if v_sum.get("failed") or v_sum.get("skipped"):
            log(f"WARNING: vidx did not index every file: {v_sum.get('failures')}")

        # 4. no-change re-run on the same folder and index.
        log(f"no-change re-run x{args.rerun_repeats}")
        rerun = timed_reruns(cmd, env, args, "no-change re-run")

        # 3. naive pipeline, in a child process of its own.
        naive = None
        if not args.skip_naive:
            naive_json = work / "naive.json"
            ncmd = [sys.executable, str(Path(__file__).resolve()), "--naive-only", "--naive-out", str(naive_json),
                    "--naive-index", str(work / "naive.faiss"), "--model", args.model,
                    "--pretrained", args.pretrained, "--threads", str(threads),
                    "--batch-size", str(eff.batch_size), "--naive-fps", f"{args.naive_fps:g}",
                    "--naive-precision", args.naive_precision,
                    "--files", *[str(c) for c in copies]]
            log("naive pipeline (ffmpeg pipe + encode_image + IndexFlatIP)")
            n_run = run_measured(ncmd, env=env, cwd=REPO_ROOT, interval_s=args.sample_interval_s,
                                 timeout_s=args.timeout_s)
            if n_run.returncode != 0:
                raise RuntimeError(f"naive pipeline failed (exit {n_run.returncode}):\n{n_run.stderr_tail()}")
            n_res = json.loads(naive_json.read_text())
            ok = [f for f in n_res["files"] if f["frames"] > 0]
            for f in n_res["files"]:
                if f["frames"] == 0 or f["ffmpeg_rc"] != 0:
                    log(f"WARNING: naive: {f['path']}: {f['frames']} frames, ffmpeg exit {f['ffmpeg_rc']} "
                        f"{f['error']}")
            naive = {"run": n_run, "res": n_res, "video_seconds": sum(durations[f["path"]] for f in ok),
                     "command": shlex.join(ncmd)}
            log(f"naive: {n_run.wall_s:.2f} s wall, {n_res['frames_embedded']} frames, "
                f"peak {n_run.peak_rss_gib:.2f} GiB")

        # 2. model-only time for exactly the frames each pipeline embedded.
        counts = [v_sum["frames_embedded"]] + ([naive["res"]["frames_embedded"]] if naive else [])
        log(f"model-only: encode_frames on {counts} random frames, {threads} threads, batch {eff.batch_size}, "
            f"{eff.precision} (vidx's precision)")
        mo = model_only_seconds(args.model, args.pretrained, threads, eff.batch_size, counts, args.frame_size,
                                args.model_only_repeats, eff.precision)

        # 4b. the whole corpus: index a copy, then time its no-change re-run.
        corpus = None
        if args.rerun_corpus:
            src = Path(args.corpus_dir or args.videos_dir)
            cdir = work / "corpus"
            shutil.copytree(src, cdir)
            ccmd = vidx_command(cdir, work / "db_corpus", args, extra)
            log(f"corpus: indexing a copy of {src} (first run, not a target)")
            c_run, c_sum = run_vidx(ccmd, env, args, "corpus index")
            log(f"corpus: {c_run.wall_s:.1f} s, {c_sum.get('indexed')} indexed, {c_sum.get('failed')} failed, "
                f"{c_sum.get('skipped')} skipped; no-change re-run x{args.rerun_repeats}")
            corpus = {"source": str(src), "first_run_wall_s": c_run.wall_s,
                      "first_run_peak_rss_gib": c_run.peak_rss_gib,
                      "first_run": {k: c_sum.get(k) for k in ("discovered", "indexed", "failed", "skipped",
                                                             "frames_embedded", "video_seconds", "clips_added")},
                      "rerun": timed_reruns(ccmd, env, args, "corpus no-change re-run")}
    except RuntimeError as exc:
        log(f"ERROR: {exc}")
        log(f"work folder kept: {work}")
        return 2
    finally:
        info["loadavg_end_1_5_15"] = [round(x, 2) for x in os.getloadavg()]

    results = assemble(args, info, eff, threads, copies, durations, cmd, v_run, v_sum, rerun, naive, mo, corpus)
    print_report(results)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nJSON written to {args.json_out}")
    if args.keep:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    failed = any(t["verdict"] == "FAIL" for t in results["targets"])
    return 1 if (args.strict and failed) else 0


def pipeline_row(run: MeasuredRun, video_s: float, frames: int, model_s: float | None, **extra) -> dict:
    return {"wall_s": run.wall_s, "video_seconds": video_s, "video_s_per_wall_s": per_s(video_s, run.wall_s),
            "frames_embedded": frames, "model_only_s": model_s, "overhead": per_s(run.wall_s, model_s),
            "peak_rss_gib": run.peak_rss_gib, "peak_processes": run.peak_procs,
            "peak_rss_breakdown": run.breakdown_text(), **extra}


def assemble(args, info, eff, threads, copies, durations, cmd, v_run, v_sum, rerun, naive, mo, corpus) -> dict:
    by_n = mo["seconds_by_frames"]
    vidx = pipeline_row(v_run, v_sum["video_seconds"], v_sum["frames_embedded"], by_n[v_sum["frames_embedded"]],
                        internal_wall_s=v_sum.get("wall_s"), clips_added=v_sum.get("clips_added"),
                        indexed=v_sum.get("indexed"), failed=v_sum.get("failed"), skipped=v_sum.get("skipped"),
                        failures=v_sum.get("failures"), workers=v_sum.get("workers"), command=shlex.join(cmd))
    nv = None
    if naive:
        r = naive["res"]
        nv = pipeline_row(naive["run"], naive["video_seconds"], r["frames_embedded"], by_n[r["frames_embedded"]],
                          internal_wall_s=r["internal_wall_s"], load_s=r["load_s"], in_loop_encode_s=r["encode_s"],
                          fps=r["fps"], image_size=r["image_size"], files=r["files"], command=naive["command"])
    speedup = per_s(vidx["video_s_per_wall_s"], nv["video_s_per_wall_s"]) if nv else None
    rerun_target = corpus["rerun"]["wall_s"] if corpus else rerun["wall_s"]
    rerun_note = "whole corpus" if corpus else "benchmark files only; use --rerun-corpus for the real target"
    targets = [
        check("overhead (vidx wall / model-only)", vidx["overhead"], "<=", TARGET_OVERHEAD, "x"),
        check("speedup (vidx / naive throughput)", speedup, ">=", TARGET_SPEEDUP, "x"),
        check("no-change re-run wall", rerun_target, "<=", TARGET_RERUN_S, "s", rerun_note),
        check("peak memory (vidx, summed RSS)", vidx["peak_rss_gib"], "<=", TARGET_PEAK_GIB, "GiB"),
    ]
    return {
        "benchmark": "index_throughput",
        "command_line": shlex.join([sys.executable] + sys.argv),
        "date": info["date"],
        "machine": info,
        "config": {"model": args.model, "pretrained": args.pretrained, "vidx_args": args.vidx_args,
                   "vidx_settings": eff.settings, "threads": threads, "batch_size": eff.batch_size,
                   "model_only_frame_hwc": mo["frame_hwc"], "model_only_load_s": mo["load_s"],
                   "model_only_repeats": mo["repeats"], "model_only_precision": mo["precision"],
                   "naive_precision": naive["res"]["precision"] if naive else None,
                   "model_only_seconds_by_frames": {str(k): v for k, v in mo["seconds_by_frames"].items()},
                   "naive_fps": args.naive_fps, "videos_dir": args.videos_dir,
                   "files": [{"name": c.name, "seconds": round(durations[str(c)], 3)} for c in copies],
                   "total_video_seconds": round(sum(durations.values()), 3)},
        "vidx": vidx,
        "naive": nv,
        "speedup": speedup,
        "rerun": rerun,
        "rerun_corpus": corpus,
        "targets": targets,
    }


def print_report(res: dict) -> None:
    v, n, m = res["vidx"], res["naive"], res["machine"]
    cfg = res["config"]
    print(f"vidx index throughput  {res['date']}")
    print(f"machine: {m['cpu_model']}, {m['cpu_affinity']} cores, {m['memory_total_gib']} GiB, "
          f"torch {m['torch']}, load {m['loadavg_1_5_15'][0]} -> {m['loadavg_end_1_5_15'][0]}")
    print(f"command: {res['command_line']}")
    print(f"input:   {len(cfg['files'])} files, {cfg['total_video_seconds']:.1f} s of video; model {cfg['model']} "
          f"({cfg['pretrained']}); {cfg['threads']} torch threads, batch {cfg['batch_size']}; model-only frames "
          f"{'x'.join(map(str, cfg['model_only_frame_hwc']))}; image tower: vidx and model-only "
          f"{cfg.get('model_only_precision')}, naive {cfg.get('naive_precision')}")
    print()

    def col(d, key, digits=2):
        if d is None:
            return "-"
        x = d.get(key)
        return str(x) if isinstance(x, int) else fmt(x, digits)

    rows = [
        ("wall time (s)", col(v, "wall_s"), col(n, "wall_s")),
        ("  in-process wall (s)", col(v, "internal_wall_s"), col(n, "internal_wall_s")),
        ("video seconds", col(v, "video_seconds", 1), col(n, "video_seconds", 1)),
        ("video-s per wall-s", col(v, "video_s_per_wall_s"), col(n, "video_s_per_wall_s")),
        ("frames embedded", col(v, "frames_embedded"), col(n, "frames_embedded")),
        ("model-only time (s)", col(v, "model_only_s"), col(n, "model_only_s")),
        ("overhead (wall/model-only)", col(v, "overhead"), col(n, "overhead")),
        ("peak RSS, all processes (GiB)", col(v, "peak_rss_gib"), col(n, "peak_rss_gib")),
        ("processes at peak", col(v, "peak_processes"), col(n, "peak_processes")),
    ]
    print(format_table(("", "vidx", "naive"), rows))
    print()
    print(f"speedup (vidx / naive video-s per wall-s): {fmt(res['speedup'])}x")
    r = res["rerun"]
    print(f"no-change re-run, benchmark files: {fmt(r['wall_s'])} s (median of {r['walls_s']})")
    if res["rerun_corpus"]:
        c = res["rerun_corpus"]
        fr = c["first_run"]
        print(f"no-change re-run, whole corpus ({fr['discovered']} files; first run {c['first_run_wall_s']:.1f} s, "
              f"{fr['indexed']} indexed, {fr['failed']} failed, {fr['skipped']} skipped): "
              f"{fmt(c['rerun']['wall_s'])} s (median of {c['rerun']['walls_s']})")
    print(f"vidx peak breakdown: {v['peak_rss_breakdown']}")
    if n:
        print(f"naive peak breakdown: {n['peak_rss_breakdown']}")
    if v.get("failed") or v.get("skipped"):
        print(f"vidx failures: {v['failures']}")
    for f in (n or {}).get("files", []):
        if f["frames"] == 0 or f["ffmpeg_rc"] != 0:
            print(f"naive: {Path(f['path']).name}: {f['frames']} frames, ffmpeg exit {f['ffmpeg_rc']}"
                  f"{': ' + f['error'] if f['error'] else ''} (its seconds are not counted for naive)")
    print()
    print(format_table(("target", "value", "goal", "result"),
                       [(t["name"], f"{fmt(t['value'])} {t['unit']}".strip(), f"{t['op']} {t['target']:g} {t['unit']}",
                         t["verdict"] + (f"  ({t['note']})" if t["note"] else "")) for t in res["targets"]]))
    warn = busy_warning(m)
    if warn:
        print(f"\n{warn}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.naive_only:
        return naive_main(args)
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
