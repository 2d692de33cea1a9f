"""What a kill part way through a long video costs, with and without saved clips (``checkpoint_s``).

Usage::

    .venv/bin/python bench/resume.py [--source FILE] [--copies 4] [--kill-at 0.75]
                                     [--checkpoint-s 5] [--json-out bench/out/resume.json]

1. A long video: ``--copies`` copies of ``--source`` (default: the 139 s H.264 768x432
   ``intel_one-by-one-person-detection.mp4`` of ``../shared/videos``) joined by the bundled
   ffmpeg's concat demuxer without re-encoding.
2. **Uninterrupted**: ``vidx index`` of it into a fresh index (ViT-B-32, random weights, default
   settings): the wall a run of that file costs. Without saved clips, a run killed part way
   through the file costs that much again on the next run: nothing of the file was kept.
3. **Killed**: the same command into another fresh index with ``--checkpoint-s``; ``kill -9`` of
   its whole process group at ``--kill-at`` x the uninterrupted wall; then the same command
   again (**resumed**), timed.
4. The resumed index must equal the uninterrupted one: same clip spans, vectors within 1e-5.

Each ``vidx index`` is a whole process (``python -m vidx``), timed from outside, with no
``VIDX_*`` variables, so Ray start-up and model loading are included, as a user sees them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "videos"
DEFAULT_SOURCE = SHARED / "intel_one-by-one-person-detection.mp4"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def join_copies(source: Path, copies: int, dest: Path) -> Path:
    import imageio_ffmpeg

    listing = dest.with_suffix(".txt")
    listing.write_text("".join(f"file '{source}'\n" for _ in range(copies)))
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0",
                    "-i", str(listing), "-c", "copy", str(dest)], check=True, timeout=300)
    listing.unlink()
    return dest


def vidx_cmd(folder: Path, db: Path, model: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "vidx", "index", str(folder), "--db", str(db), "--model", model,
            "--pretrained", "random", "--json", "--no-progress", *extra]


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("VIDX_")}
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def run(cmd: list[str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"vidx failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout)


def run_and_kill(cmd: list[str], after_s: float) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=after_s)
        raise SystemExit(f"the run finished in {time.perf_counter() - t0:.1f} s, before the kill at {after_s:.1f} s")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return time.perf_counter() - t0


def clips_of(db: Path) -> tuple[list, np.ndarray, int]:
    import duckdb

    con = duckdb.connect(str(db / "vidx.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT c.idx, c.start_s, c.end_s, v.vector FROM clips c JOIN clip_vectors v "
                           "USING (clip_id) ORDER BY c.idx").fetchall()
        partial = con.execute("SELECT count(*) FROM partial_clips").fetchone()[0]
    finally:
        con.close()
    return [r[:3] for r in rows], np.array([r[3] for r in rows], np.float32), int(partial)


def saved_clips(db: Path) -> int:
    import duckdb

    con = duckdb.connect(str(db / "vidx.duckdb"), read_only=True)
    try:
        return int(con.execute("SELECT count(*) FROM partial_clips").fetchone()[0])
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--kill-at", type=float, default=0.75, help="fraction of the uninterrupted wall")
    ap.add_argument("--checkpoint-s", type=float, default=5.0)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="vidx_resume_"))
    try:
        folder = work / "videos"
        folder.mkdir()
        video = join_copies(args.source.resolve(), args.copies, folder / "long.mp4")
        log(f"long video: {video} ({video.stat().st_size / 1e6:.1f} MB)")

        full_wall, full = run(vidx_cmd(folder, work / "full", args.model, []))
        log(f"uninterrupted: {full_wall:.2f} s wall, {full['clips_added']} clips, {full['frames_embedded']} frames")

        cmd = vidx_cmd(folder, work / "resumed", args.model, ["--checkpoint-s", f"{args.checkpoint_s:g}"])
        kill_s = args.kill_at * full_wall
        killed_wall = run_and_kill(cmd, kill_s)
        saved = saved_clips(work / "resumed")
        log(f"killed at {killed_wall:.2f} s with {saved} clips saved")
        resumed_wall, resumed = run(cmd)
        log(f"resumed: {resumed_wall:.2f} s wall, {resumed['frames_embedded']} frames embedded, "
            f"{resumed['clips_resumed']} clips kept")

        spans_a, vec_a, _ = clips_of(work / "full")
        spans_b, vec_b, left = clips_of(work / "resumed")
        same = spans_a == spans_b and vec_a.shape == vec_b.shape and bool(np.allclose(vec_a, vec_b, atol=1e-5))
        res = {
            "source": str(args.source), "copies": args.copies, "video_s": full["video_seconds"],
            "model": args.model, "checkpoint_s": args.checkpoint_s, "kill_at": args.kill_at,
            "uninterrupted": {"wall_s": round(full_wall, 2), "clips": full["clips_added"],
                              "frames_embedded": full["frames_embedded"]},
            "killed_after_s": round(killed_wall, 2), "clips_saved_at_kill": saved,
            "resumed": {"wall_s": round(resumed_wall, 2), "frames_embedded": resumed["frames_embedded"],
                        "clips_resumed": resumed["clips_resumed"], "clips": resumed["clips_added"]},
            "rerun_without_saved_clips_s": round(full_wall, 2),
            "rerun_saved_s": round(full_wall - resumed_wall, 2),
            "same_index_as_uninterrupted": same, "partial_rows_left": left,
            "cpu_count": os.cpu_count(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        }
        print(json.dumps(res, indent=2))
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(res, indent=2))
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
