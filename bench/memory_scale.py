"""Bounded memory: peak memory of ``vidx index`` on 200 vs 2,000 short files.

The archive: ``--distinct`` (8) one-second 64x48 H.264 clips rendered by ffmpeg's lavfi sources
(testsrc2, smptebars, mandelbrot, ...), then copied into N files by re-muxing each
with PyAV (packets copied, no re-encode) under a different container title, so every
file's bytes differ: vidx recognises byte-identical copies and clones their vectors without
decoding, which would not exercise the pipeline. The 200-file archive is a hard-linked
subset of the 2,000-file one (different folder: distinct within each run).

Each size is indexed into a fresh index by ``python -m vidx index DIR --db NEW --model M
--pretrained P --json --no-progress`` (Ray embedded, default settings, no ``VIDX_*``
variables), sampled every 0.2 s:

* driver: RSS of the ``vidx`` process itself (discovery, plan, the Ray driver loop, DuckDB,
  FAISS); target ``peak(2000) / peak(200) <= 1.2``;
* all: summed RSS of the driver and all its descendants (Ray's gcs, raylet, object store
  pages mapped by workers, decode workers, the model actor); reported, same ratio.

Usage::

    .venv/bin/python bench/memory_scale.py                      # 200 vs 2000, vidx-tiny
    .venv/bin/python bench/memory_scale.py --sizes 100 1000 --json-out bench/out/memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import busy_warning, check, clean_vidx_env, fmt, format_table, machine_info  # noqa: E402

SOURCES = ("testsrc2", "smptebars", "mandelbrot", "rgbtestsrc", "life", "cellauto", "testsrc", "yuvtestsrc")
MIB = 1024 ** 2


def render_sources(folder: Path, n: int, size: str, seconds: float) -> list[Path]:
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    out = []
    for i in range(n):
        path = folder / f"src{i}.mp4"
        subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"{SOURCES[i % len(SOURCES)]}=size={size}:rate=25", "-t", str(seconds),
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
                       check=True, timeout=120)
        out.append(path)
    return out


def remux(src: Path, dst: Path, title: str) -> None:
    """``ffmpeg -i src -c copy -metadata title=T dst``, in-process (PyAV): same frames, other bytes."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        out.metadata["title"] = title
        stream = inp.streams.video[0]
        ostream = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = ostream
            out.mux(packet)


def build_archive(root: Path, n: int, distinct: int, size: str, seconds: float) -> Path:
    folder = root / f"archive_{n}"
    if folder.is_dir() and len(list(folder.iterdir())) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sources = render_sources(root, distinct, size, seconds) if not (root / "src0.mp4").exists() else \
        sorted(root.glob("src*.mp4"))
    for i in range(n):
        remux(sources[i % len(sources)], folder / f"f{i:05d}.mp4", f"vidx-memory-{i}")
    return folder


def subset(archive: Path, root: Path, n: int) -> Path:
    folder = root / f"archive_{n}"
    if folder.is_dir() and len(list(folder.iterdir())) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(archive.iterdir())[:n]:
        os.link(f, folder / f.name)
    return folder


class Sampler:
    """Peak RSS of the root process alone and of its whole tree, plus a time series."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        self.pid, self.interval_s = pid, interval_s
        self.driver_peak = self.tree_peak = 0
        self.tree_breakdown: list[tuple[str, int]] = []
        self.series: list[tuple[float, int, int]] = []  # (t, driver, tree)
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root] + root.children(recursive=True)
                driver = root.memory_info().rss
            except psutil.Error:
                break
            total, parts = 0, []
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    parts.append((p.name(), rss))
                    total += rss
                except psutil.Error:
                    continue
            if driver == 0:  # exited (a zombie): not a sample
                break
            self.driver_peak = max(self.driver_peak, driver)
            if total > self.tree_peak:
                self.tree_peak, self.tree_breakdown = total, sorted(parts, key=lambda x: -x[1])
            self.series.append((time.monotonic() - self._t0, driver, total))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def driver_at(self, fraction: float) -> int:
        if not self.series:
            return 0
        end = self.series[-1][0]
        return min(self.series, key=lambda s: abs(s[0] - fraction * end))[1]


def run_index(folder: Path, db: Path, model: str, pretrained: str, env: dict, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "vidx", "index", str(folder), "--db", str(db), "--model", model,
           "--pretrained", pretrained, "--json", "--no-progress", *extra]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=str(REPO_ROOT))
        sampler = Sampler(proc.pid)
        rc = proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if rc != 0:
        raise RuntimeError(f"vidx index failed (rc={rc}):\n{stderr[-3000:]}")
    summary = json.loads(stdout[stdout.find("{"):])
    merged: dict[str, int] = {}
    for name, rss in sampler.tree_breakdown:
        merged[name] = merged.get(name, 0) + rss
    return {
        "files": len(list(folder.iterdir())), "wall_s": round(wall, 1), "indexed": summary["indexed"],
        "failed": summary["failed"], "copied": summary["copied"], "clips": summary["clips_added"],
        "driver_peak_mib": round(sampler.driver_peak / MIB, 1), "tree_peak_mib": round(sampler.tree_peak / MIB, 1),
        "driver_mib_at": {f"{int(f * 100)}%": round(sampler.driver_at(f) / MIB, 1) for f in (0.25, 0.5, 0.75, 1.0)},
        "tree_peak_breakdown_mib": {k: round(v / MIB, 1) for k, v in sorted(merged.items(), key=lambda kv: -kv[1])[:8]},
        "samples": len(sampler.series), "cmd": " ".join(cmd),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=(200, 2000), metavar=("SMALL", "LARGE"))
    ap.add_argument("--model", default="vidx-tiny")
    ap.add_argument("--pretrained", default="random")
    ap.add_argument("--distinct", type=int, default=8, help="distinct rendered clips the files are re-muxed from")
    ap.add_argument("--frame-size", default="64x48")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--vidx-args", default="", help="extra arguments for vidx index")
    ap.add_argument("--workdir", help="keep the archives here (re-used when present)")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    info = machine_info()
    warning = busy_warning(info)
    scratch = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vidx-memory-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        small_n, large_n = args.sizes
        t0 = time.monotonic()
        large = build_archive(scratch, large_n, args.distinct, args.frame_size, args.seconds)
        small = subset(large, scratch, small_n)
        build_s = time.monotonic() - t0
        env = clean_vidx_env(scratch)
        env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="vxm", dir="/tmp")
        extra = args.vidx_args.split()
        results = {}
        for n, folder in ((small_n, small), (large_n, large)):
            db = scratch / f"index_{n}"
            shutil.rmtree(db, ignore_errors=True)
            results[n] = run_index(folder, db, args.model, args.pretrained, env, extra)
            print(f"{n} files: {results[n]['wall_s']} s, driver peak {results[n]['driver_peak_mib']} MiB, "
                  f"all {results[n]['tree_peak_mib']} MiB", file=sys.stderr)
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(scratch, ignore_errors=True)

    s, l_ = results[small_n], results[large_n]
    driver_ratio = l_["driver_peak_mib"] / s["driver_peak_mib"]
    tree_ratio = l_["tree_peak_mib"] / s["tree_peak_mib"]
    rows = [[n, r["wall_s"], r["indexed"], r["failed"], r["copied"], r["clips"], r["driver_peak_mib"],
             r["tree_peak_mib"], " / ".join(str(v) for v in r["driver_mib_at"].values())]
            for n, r in results.items()]
    print(format_table(["files", "wall s", "indexed", "failed", "cloned", "clips", "driver peak MiB",
                        "all procs peak MiB", "driver MiB at 25/50/75/100%"], rows))
    for n, r in results.items():
        print(f"at the peak of all processes ({n} files): {r['tree_peak_breakdown_mib']}")
    checks = [check("driver peak ratio large/small", round(driver_ratio, 3), "<=", 1.2),
              check("all-process peak ratio large/small (reported)", round(tree_ratio, 3), "<=", 1.2)]
    for c in checks:
        print(f"{c['verdict']}: {c['name']} = {fmt(c['value'], 3)} (target {c['op']} {c['target']})")
    if warning:
        print(warning)
    report = {"machine": info, "warning": warning, "archive_build_s": round(build_s, 1),
              "archive": {"distinct": args.distinct, "frame_size": args.frame_size, "seconds": args.seconds},
              "model": args.model, "pretrained": args.pretrained, "results": results,
              "driver_ratio": round(driver_ratio, 3), "tree_ratio": round(tree_ratio, 3), "checks": checks,
              "command": " ".join([sys.executable, *sys.argv])}
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
