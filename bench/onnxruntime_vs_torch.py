"""Would ONNX Runtime encode frames faster than PyTorch on this CPU? (issue 2: model cost)

Exports the ViT-B-32 image tower (open_clip, random weights: the cost of trained ones) to
ONNX, checks that both give the same embeddings, then times batches of 32 frames at
224x224 with 2 threads, alternating PyTorch and ONNX Runtime (all graph optimisations),
and reports the median ms per frame of each.

Needs onnxruntime (not a vidx dependency): pip install onnxruntime
Run:   .venv/bin/python bench/onnxruntime_vs_torch.py [--repeats 5] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine_info, write_json_out  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: pip install onnxruntime", file=sys.stderr)
        return 2
    import numpy as np
    import open_clip
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    visual = model.visual
    x = torch.randn(args.batch, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "visual.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(visual, (x,), path, input_names=["pixels"], output_names=["emb"],
                              dynamic_axes={"pixels": {0: "n"}, "emb": {0: "n"}}, opset_version=18, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {"pixels": x.numpy()}
    with torch.inference_mode():
        ref = visual(x).numpy()
    out = sess.run(None, feed)[0]
    cos = float((np.sum(out * ref, 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)).min())
    torch_ms, ort_ms = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            visual(x)
        torch_ms.append((time.perf_counter() - t0) * 1e3 / args.batch)
        t0 = time.perf_counter()
        sess.run(None, feed)
        ort_ms.append((time.perf_counter() - t0) * 1e3 / args.batch)
    res = {"benchmark": "onnxruntime_vs_torch", "command_line": " ".join([sys.executable] + sys.argv),
           "machine": machine_info(), "onnxruntime": ort.__version__, "batch": args.batch,
           "threads": args.threads, "min_cosine_torch_vs_ort": cos,
           "torch_ms_per_frame": torch_ms, "ort_ms_per_frame": ort_ms,
           "torch_median": statistics.median(torch_ms), "ort_median": statistics.median(ort_ms)}
    print(f"ViT-B-32 image tower, batch {args.batch}, {args.threads} threads, {args.repeats} alternating repeats: "
          f"PyTorch {res['torch_median']:.1f} ms/frame, ONNX Runtime {ort.__version__} {res['ort_median']:.1f} "
          f"ms/frame (x{res['torch_median'] / res['ort_median']:.2f}); embeddings agree to cosine {cos:.6f}")
    write_json_out(args.json_out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
