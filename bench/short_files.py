"""Many short files: what per-file costs do to ``vidx index``.

Archives of short clips (user uploads, stock footage, datasets of 2-10 s clips) make one
small decode task and one small chunk per file: a 2 s file at the default settings is one
clip of 2 snippet frames. This benchmark makes ``--n`` distinct short H.264 files with the
bundled ffmpeg (``testsrc2`` with a different hue each, so no two share a fingerprint),
indexes them with ViT-B-32 (random weights: the cost of trained ones) into a fresh index
``--repeats`` times, and reports the median wall time, the frames embedded and what the
model alone needs for that many frames (batches of 32, 2 threads, vidx's precision).

Run:   .venv/bin/python bench/short_files.py [--n 200] [--duration-s 2] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import busy_warning, clean_vidx_env, machine_info, run_measured, write_json_out  # noqa: E402
from bench.index_throughput import model_only_seconds  # noqa: E402


def make_short_files(folder: Path, n: int, duration_s: float, size: str) -> None:
    """``n`` distinct H.264 files of ``duration_s`` seconds (25 fps, ``size``)."""
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size={size}:rate=25,hue=h={(i * 7) % 360}", "-t", str(duration_s),
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                        str(folder / f"clip_{i:05d}.mp4")], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="number of files")
    ap.add_argument("--duration-s", type=float, default=2.0, help="length of each file")
    ap.add_argument("--size", default="320x240", help="frame size of each file")
    ap.add_argument("--repeats", type=int, default=3, help="index runs (fresh index each); the median is reported")
    ap.add_argument("--vidx-args", default="", help="extra vidx index options, one string")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="vidx-short-") as tmp:
        videos = Path(tmp) / "videos"
        make_short_files(videos, args.n, args.duration_s, args.size)
        env = clean_vidx_env(tmp)
        runs = []
        for r in range(args.repeats):
            db = Path(tmp) / f"db{r}"
            cmd = [sys.executable, "-m", "vidx", "index", str(videos), "--db", str(db), "--model", "ViT-B-32",
                   "--pretrained", "random", "--json", "--no-progress", *args.vidx_args.split()]
            run = run_measured(cmd, env=env)
            if run.returncode != 0:
                print(f"vidx index failed (rc {run.returncode}):\n{run.stderr[-2000:]}", file=sys.stderr)
                return 1
            summary = json.loads(run.stdout)
            runs.append({"wall_s": run.wall_s, "peak_rss_gib": run.peak_rss_bytes / 1024 ** 3,
                         "indexed": summary["indexed"], "failed": summary["failed"],
                         "frames_embedded": summary["frames_embedded"], "video_seconds": summary["video_seconds"]})
            print(f"run {r + 1}: {run.wall_s:.2f} s, {summary['indexed']} indexed, "
                  f"{summary['frames_embedded']} frames", file=sys.stderr)
    frames = runs[0]["frames_embedded"]
    w, h = (int(x) for x in args.size.split("x"))
    short = 224
    frame_size = f"{short}x{round(short * w / h)}" if w >= h else f"{round(short * h / w)}x{short}"
    model = model_only_seconds("ViT-B-32", "random", 2, 32, [frames], frame_size, repeats=2, precision="auto")
    model_s = model["seconds_by_frames"][frames]
    wall = statistics.median(r["wall_s"] for r in runs)
    walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs)
    res = {"benchmark": "short_files", "command_line": " ".join([sys.executable] + sys.argv), "machine": info,
           "config": {"n": args.n, "duration_s": args.duration_s, "size": args.size, "repeats": args.repeats,
                      "vidx_args": args.vidx_args, "model_only": model},
           "runs": runs, "wall_s_median": wall, "frames_embedded": frames, "model_only_s": model_s,
           "overhead": wall / model_s if model_s else None,
           "seconds_per_file": wall / args.n, "video_s_per_wall_s": runs[0]["video_seconds"] / wall}
    print(f"{args.n} files of {args.duration_s:g} s ({args.size}): wall median {wall:.2f} s "
          f"({walls}); {frames} frames; model-only {model_s:.2f} s "
          f"({model['precision']}); overhead {res['overhead']:.2f}; {1000 * wall / args.n:.0f} ms per file")
    warning = busy_warning(info)
    if warning:
        print(warning, file=sys.stderr)
    write_json_out(args.json_out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
