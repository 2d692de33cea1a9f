"""Where the CPU time of one ``vidx index`` run goes: the arithmetic behind issue 2's targets.

Runs ``vidx index`` (ViT-B-32, random weights: the cost of trained ones) on the benchmark
files (``bench/common.py`` BENCH_FILES) into a fresh index and reports:

  * the machine's busy CPU-seconds during the run (``/proc/stat``: every process, Ray's
    daemons included) against what the cores could give (wall x cores): how saturated the
    machine is, i.e. whether a better schedule could still shorten the run;
  * CPU-seconds per role: the vidx driver, the model actor, the decode workers, Ray's
    daemons, other. Every process whose command line mentions ray or vidx is sampled
    every ``--interval`` s; a process's last sample is what it counts (up to one interval
    of CPU of short-lived processes is missed, so the roles add up to a little less than
    the busy total);
  * the model-only CPU-seconds for the run's frames (``--model-only``: ViT-B-32 in batches of
    32 with 2 torch threads in this process, as ``bench/index_throughput.py`` measures it).

With the model-only CPU known, the smallest possible wall time of any schedule on this
machine is (busy CPU-s) / cores, and the wall that a target needs bounds the non-model CPU.

Run:   .venv/bin/python bench/cpu_accounting.py [--executor ray|local] [--json-out FILE]
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
from collections import defaultdict
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (BENCH_FILES, SHARED_VIDEOS, clean_vidx_env, copy_inputs, machine_info,  # noqa: E402
                          write_json_out)

_DAEMON_MARKERS = ("gcs_server", "raylet", "plasma", "dashboard", "log_monitor", "monitor.py",
                   "RuntimeEnvAgent", "DashboardAgent", "runtime_env", "ray_client")


def _busy_cpu_s() -> tuple[float, float]:
    """(busy, idle) CPU-seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / hz, idle / hz


def _role(proc: psutil.Process, root_pid: int) -> str:
    cmd = " ".join(proc.cmdline())
    name = proc.name()
    if proc.pid == root_pid:
        return "vidx driver"
    if "ModelActor" in cmd or "ModelActor" in name:
        return "model actor"
    if any(m in cmd or m in name for m in _DAEMON_MARKERS):
        return "ray daemons"
    if cmd.startswith("ray::") or name.startswith("ray::") or "default_worker.py" in cmd:
        return "decode workers"
    return "other"


class CpuSampler:
    """Latest cpu_times of every ray/vidx process, sampled in a background thread."""

    def __init__(self, root_pid: int, interval_s: float):
        self.root_pid, self.interval_s = root_pid, interval_s
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        for proc in psutil.process_iter():
            try:
                if proc.pid != self.root_pid:
                    cmd = " ".join(proc.cmdline())
                    if "ray" not in cmd and "vidx" not in cmd and not proc.name().startswith(("ray", "gcs", "raylet")):
                        continue
                    if proc.pid == os.getpid():
                        continue
                role = _role(proc, self.root_pid)
                if self.last.get(proc.pid, ("",))[0] == "model actor":
                    role = "model actor"  # an idle worker becomes the actor; it stays one
                t = proc.cpu_times()
                self.last[proc.pid] = (role, t.user + t.system)
            except psutil.Error:
                continue

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def by_role(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for role, cpu in self.last.values():
            out[role] += cpu
        return dict(out)


def model_only_cpu_s(frames: int, threads: int = 2, batch: int = 32) -> float:
    """CPU-seconds of ViT-B-32 (random weights) on ``frames`` frames, in this process."""
    import numpy as np
    import torch

    from indexer.model import LoadedModel, resolve_model

    torch.set_num_threads(threads)
    model = LoadedModel(resolve_model("ViT-B-32", "random"), device="cpu", threads=threads)
    x = np.random.default_rng(0).integers(0, 255, (batch, 224, 398, 3), dtype=np.uint8)
    model.encode_frames(x[:4], batch_size=4)  # warm-up
    t0 = time.process_time()
    done = 0
    while done < frames:
        n = min(batch, frames - done)
        model.encode_frames(x[:n], batch_size=batch)
        done += n
    return time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--executor", choices=("ray", "local"), default="ray")
    ap.add_argument("--interval", type=float, default=0.1, help="sampling interval (s)")
    ap.add_argument("--no-model-only", action="store_true", help="skip the model-only CPU measurement")
    ap.add_argument("--videos", help="index this folder (copied) instead of the benchmark files")
    ap.add_argument("--vidx-args", default="", metavar="ARGS", help="extra arguments for vidx index, e.g. "
                    "\"--no-shots --sampling keyframe\"")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    info = machine_info()
    cores = len(os.sched_getaffinity(0)) or 1
    with tempfile.TemporaryDirectory(prefix="vidx-cpu-") as tmp:
        videos = Path(tmp) / "videos"
        if args.videos:
            shutil.copytree(args.videos, videos)
        else:
            copy_inputs(BENCH_FILES, SHARED_VIDEOS, videos)
        n_files = sum(1 for p in videos.rglob("*") if p.is_file())
        env = clean_vidx_env(tmp)
        cmd = [sys.executable, "-m", "vidx", "index", str(videos), "--db", str(Path(tmp) / "db"),
               "--model", "ViT-B-32", "--pretrained", "random", "--json", "--no-progress",
               "--executor", args.executor, *args.vidx_args.split()]
        busy0, idle0 = _busy_cpu_s()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        with CpuSampler(proc.pid, args.interval) as sampler:
            out, _ = proc.communicate()
        wall = time.perf_counter() - t0
        busy1, idle1 = _busy_cpu_s()
    if proc.returncode != 0:
        print(f"vidx index failed (rc {proc.returncode})", file=sys.stderr)
        return 1
    summary = json.loads(out)
    frames = int(summary.get("frames_embedded") or 0)
    roles = sampler.by_role()
    busy = busy1 - busy0
    res = {"benchmark": "cpu_accounting", "command_line": " ".join([sys.executable] + sys.argv),
           "machine": info, "videos": args.videos or "bench files", "files": n_files, "executor": args.executor,
           "vidx_args": args.vidx_args, "cores": cores, "wall_s": wall,
           "busy_cpu_s": busy, "idle_cpu_s": idle1 - idle0, "available_cpu_s": wall * cores,
           "saturation": busy / (wall * cores), "frames_embedded": frames, "cpu_s_by_role": roles}
    if not args.no_model_only and frames:
        res["model_only_cpu_s"] = model_only_cpu_s(frames)
        res["non_model_cpu_s"] = busy - res["model_only_cpu_s"]
        res["min_wall_s_any_schedule"] = busy / cores
    print(f"vidx index ({args.executor}) on {n_files} files: wall {wall:.2f} s on {cores} cores; "
          f"busy {busy:.1f} of {wall * cores:.1f} CPU-s available ({res['saturation']:.0%} saturated)")
    for role, cpu in sorted(roles.items(), key=lambda kv: -kv[1]):
        print(f"  {role:15s} {cpu:6.1f} CPU-s")
    if "model_only_cpu_s" in res:
        print(f"model-only CPU for the {frames} frames: {res['model_only_cpu_s']:.1f} CPU-s; everything else "
              f"{res['non_model_cpu_s']:.1f} CPU-s; no schedule of this work can finish in under "
              f"{res['min_wall_s_any_schedule']:.1f} s")
    write_json_out(args.json_out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
