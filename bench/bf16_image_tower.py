"""ViT-B-32's image tower in float32 against bfloat16 autocast on this CPU.

Usage::

    .venv/bin/python bench/bf16_image_tower.py [--repeats 5] [--json-out bench/out/bf16_image_tower.json]

Times ``LoadedModel.encode_frames`` (preprocessing, forward pass, L2 norm) on batches of 32
frames (2 torch threads, as vidx's model actor on 2 cores) in three ways, alternating
``--repeats`` times after a warm-up of each: float32; the image tower's weights in bfloat16
(``precision="bf16"``, what vidx does on a CPU with native bfloat16); and the float32 model
under ``torch.autocast("cpu", torch.bfloat16)``, which casts per operation. The frames are the first 224x224 centre crops of real clips from
``../shared/videos`` (decoded with PyAV), so the activations are those of real images. Reports
ms per frame and how close the bfloat16 embeddings are to the float32 ones: cosine per frame;
and, with each frame as a query against the others, whether its nearest neighbour stays the
same and how much of its float32 top 10 the bfloat16 embeddings keep.
The weights are random (none can be downloaded here): trained weights cost the same, but their
bfloat16 error may differ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_json_out  # noqa: E402


def _frames(n: int) -> np.ndarray:
    import av

    videos = sorted((ROOT.parent / "shared" / "videos").glob("*.mp4"))
    out = []
    for path in videos:
        try:
            with av.open(str(path)) as box:
                for i, frame in enumerate(box.decode(video=0)):
                    if i % 15:
                        continue
                    img = frame.to_ndarray(format="rgb24", width=224 * frame.width // min(frame.width, frame.height),
                                           height=224 * frame.height // min(frame.width, frame.height))
                    h, w = img.shape[:2]
                    out.append(img[(h - 224) // 2:(h - 224) // 2 + 224, (w - 224) // 2:(w - 224) // 2 + 224])
                    if len(out) >= n or i > 300:
                        break
        except Exception:  # the corpus holds broken files on purpose
            continue
        if len(out) >= n:
            break
    return np.stack(out[:n])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, default=4, help="batches of 32 per timed repeat")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)

    import torch

    from indexer.model import LoadedModel, native_bf16_cpu, resolve_model

    spec = resolve_model("ViT-B-32", "random")
    full = LoadedModel(spec, threads=args.threads, precision="fp32")
    half = LoadedModel(spec, threads=args.threads, precision="bf16")
    frames = _frames(32 * args.batches)

    def run(name: str) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        if name == "fp32":
            emb = full.encode_frames(frames)
        elif name == "bf16":
            emb = half.encode_frames(frames)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                emb = full.encode_frames(frames)
        return (time.perf_counter() - t0) / len(frames), emb

    names = ("fp32", "bf16", "autocast_bf16")
    for name in names:  # warm-up (oneDNN picks and caches its kernels)
        run(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    embs = {}
    for _ in range(args.repeats):
        for name in names:
            dt, embs[name] = run(name)
            times[name].append(dt)
    e32, e16 = embs["fp32"], embs["bf16"]
    cos = np.sum(e32 * e16, axis=1)
    s32, s16 = e32 @ e32.T, e16 @ e16.T
    np.fill_diagonal(s32, -2), np.fill_diagonal(s16, -2)
    same_nn = float(np.mean(s32.argmax(1) == s16.argmax(1)))
    # each frame as a query against the others: how much of the float32 top 10 bfloat16 keeps
    top32, top16 = np.argsort(-s32, axis=1)[:, :10], np.argsort(-s16, axis=1)[:, :10]
    top10 = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top32.tolist(), top16.tolist())]))
    res = {"frames": len(frames), "threads": args.threads, "repeats": args.repeats,
           "ms_per_frame": {k: [round(v * 1e3, 2) for v in vs] for k, vs in times.items()},
           "median_ms_per_frame": {k: round(float(np.median(vs)) * 1e3, 2) for k, vs in times.items()},
           "cosine_bf16_vs_fp32": {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6)},
           "same_nearest_neighbour": same_nn, "top10_overlap": round(top10, 4),
           "native_bf16_cpu": native_bf16_cpu(),
           "bf16_supported": bool(torch.backends.mkldnn.is_available()
                                  and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
           "torch": torch.__version__, "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
           "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    med = res["median_ms_per_frame"]
    res["speedup_bf16"] = round(med["fp32"] / med["bf16"], 3)
    res["speedup_autocast"] = round(med["fp32"] / med["autocast_bf16"], 3)
    print(json.dumps(res, indent=2))
    write_json_out(args.json_out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
