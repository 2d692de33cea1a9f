"""How long a worker takes to load its model: ``LoadedModel(spec)`` in a fresh process.

Every index, moderation and scene-tagging run loads the model once per model actor, on the
critical path: frames wait for it. Users load trained weights (a pretrained tag's cached file,
or a checkpoint file or folder); none can be downloaded here, so this writes ViT-B-32 with
random weights to checkpoint files (the same size and layout as trained ones) and loads them
as a user's ``--pretrained FILE`` would. ``random`` (weights drawn, nothing read) is measured
too: it is what the throughput benchmarks use.

Each repeat is a fresh ``python`` process (imports of torch and open_clip included, as in a
worker), run in turn for each kind; reported: the wall and CPU time of the imports and of
``LoadedModel(spec)``, medians over repeats. ``--repo DIR`` loads vidx from another checkout
(a ``git worktree`` of an older commit) for before/after comparisons.

Run:   .venv/bin/python bench/model_load.py [--repeats 5] [--repo DIR] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import clean_vidx_env, machine_info, write_json_out  # noqa: E402

CHILD = r"""
import json, resource, sys, time

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

t0, c0 = time.perf_counter(), cpu()
import torch, open_clip  # noqa: F401,E401
from indexer.model import LoadedModel, resolve_model
t1, c1 = time.perf_counter(), cpu()
spec = resolve_model(sys.argv[1], sys.argv[2])
t2, c2 = time.perf_counter(), cpu()
model = LoadedModel(spec, threads=int(sys.argv[3]))
t3, c3 = time.perf_counter(), cpu()
print(json.dumps({"import_s": t1 - t0, "import_cpu_s": c1 - c0, "resolve_s": t2 - t1,
                  "load_s": t3 - t2, "load_cpu_s": c3 - c2, "dim": model.dim}))
"""


def write_checkpoints(model: str, folder: Path) -> dict[str, str]:
    """ViT-B-32 (random weights, seed 0) as a torch ``.bin`` and a ``.safetensors`` file."""
    import logging

    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    logging.disable(logging.WARNING)  # open_clip's "No pretrained weights loaded": intended here
    net = open_clip.create_model(model, pretrained=None)
    logging.disable(logging.NOTSET)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    bin_path, st_path = folder / "open_clip_pytorch_model.bin", folder / "open_clip_model.safetensors"
    torch.save(state, bin_path)
    save_file(state, str(st_path))
    return {"checkpoint .bin": str(bin_path), "checkpoint .safetensors": str(st_path)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, as a model actor on 2 cores")
    ap.add_argument("--repo", default=str(ROOT), help="the vidx checkout to load (default: this one)")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="vidx-load-") as tmp:
        kinds = {"random": "random", **write_checkpoints(args.model, Path(tmp))}
        env = clean_vidx_env(tmp)
        env["PYTHONPATH"] = args.repo
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(args.repeats):
            for kind, pretrained in kinds.items():
                done = subprocess.run([sys.executable, "-c", CHILD, args.model, pretrained, str(args.threads)],
                                      env=env, cwd=args.repo, capture_output=True, text=True, timeout=300)
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                runs[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {kind: {key: round(statistics.median(r[key] for r in rs), 3)
                      for key in ("import_s", "import_cpu_s", "load_s", "load_cpu_s")}
               for kind, rs in runs.items()}
    for kind, med in summary.items():
        print(f"{kind:26s} imports {med['import_s']:.2f} s; LoadedModel {med['load_s']:.2f} s wall, "
              f"{med['load_cpu_s']:.2f} CPU-s (medians of {args.repeats})")
    write_json_out(args.json_out, {"benchmark": "model_load", "command_line": " ".join([sys.executable] + sys.argv),
                                   "machine": info, "repo": args.repo, "model": args.model,
                                   "threads": args.threads, "summary": summary, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
