"""The image tower's cost per frame against its batch size.

Short files give small chunks (a 2 s file: 2 frames); this is what embedding them one tiny
batch each would cost, next to full batches. ViT-B-32 (random weights: the cost of trained
ones), 2 torch threads, vidx's precision (``--precision``, default auto), ``--frames`` frames
per size after one untimed warm-up batch of each size; the best of ``--repeats``.

Run:   .venv/bin/python bench/model_batch_sizes.py [--precision auto] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_info, write_json_out  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--sizes", default="1,2,3,6,12,32")
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    import numpy as np

    from indexer.model import LoadedModel, resolve_model

    info = machine_info()
    model = LoadedModel(resolve_model("ViT-B-32", "random"), "cpu", 2, args.precision)
    frames = np.random.default_rng(0).integers(0, 256, (max(32, args.frames), 224, 298, 3), np.uint8)
    ms_per_frame = {}
    for size in (int(x) for x in args.sizes.split(",")):
        model.encode_frames(frames[:size], batch_size=size)  # warm-up: a new shape's one-off cost
        best = float("inf")
        for _ in range(args.repeats):
            n, t = 0, time.perf_counter()
            while n < args.frames:
                model.encode_frames(frames[:size], batch_size=size)
                n += size
            best = min(best, (time.perf_counter() - t) / n)
        ms_per_frame[size] = 1000 * best
        print(f"batch {size:3d}: {1000 * best:6.1f} ms/frame")
    write_json_out(args.json_out, {"benchmark": "model_batch_sizes", "machine": info,
                                   "command_line": " ".join([sys.executable] + sys.argv),
                                   "precision": model.precision, "ms_per_frame_by_batch": ms_per_frame})
    return 0


if __name__ == "__main__":
    sys.exit(main())
