"""What starting and stopping an embedded Ray session costs every ``vidx index`` run.

Each repeat runs in a fresh child process (as a ``vidx`` run does): ``ray_session()`` is
entered (timed: Ray's start), one trivial task runs, and the session is left (timed: the
shutdown). ``--ray-shutdown`` leaves it with plain ``ray.shutdown()`` instead, i.e. without
vidx killing the autoscaler monitor first, which is how every run stopped before the tenth
session. ``--ray-connect-retry-ms 1000`` gives Ray's own retry delay for local socket connects,
i.e. how every embedded start ran before the eleventh session (a user's setting wins over vidx's
50 ms). Also reported per repeat: how long Ray's shutdown spent on each of its processes.

Run:   .venv/bin/python bench/ray_start_stop.py [--repeats 6] [--json-out FILE]
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

from bench.common import clean_vidx_env, machine_info, write_json_out  # noqa: E402

CHILD = r"""
import json, sys, time
import ray
from ray._private import node as ray_node
import pipelines.ray_runtime as rt

per_process = {}
original = ray_node.Node._kill_process_impl

def timed(self, process_type, **kwargs):
    t = time.perf_counter()
    original(self, process_type, **kwargs)
    per_process[process_type] = round(time.perf_counter() - t, 4)

ray_node.Node._kill_process_impl = timed
if sys.argv[1] == "ray-shutdown":
    rt._stop_autoscaler_monitor = lambda: None  # Ray's own shutdown order, as before
t0 = time.perf_counter()
with rt.ray_session() as resources:
    t1 = time.perf_counter()
    ray.get(ray.remote(lambda: 1).remote())
    t2 = time.perf_counter()
t3 = time.perf_counter()
print(json.dumps({"start_s": t1 - t0, "stop_s": t3 - t2, "kill_s_by_process": per_process}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--ray-shutdown", action="store_true", help="plain ray.shutdown() (before the tenth session)")
    ap.add_argument("--ray-connect-retry-ms", type=int,
                    help="set RAY_raylet_client_connect_timeout_milliseconds (1000: Ray's default, as before "
                         "the eleventh session; unset: vidx's choice)")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    info = machine_info()
    mode = "ray-shutdown" if args.ray_shutdown else "vidx"
    runs = []
    with tempfile.TemporaryDirectory(prefix="vxr", dir="/tmp") as tmp:
        env = clean_vidx_env(tmp)
        env["RAY_TMPDIR"] = tmp
        if args.ray_connect_retry_ms is not None:
            env["RAY_raylet_client_connect_timeout_milliseconds"] = str(args.ray_connect_retry_ms)
        for _ in range(args.repeats):
            done = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True,
                                  timeout=300, cwd=Path(__file__).resolve().parents[1])
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    starts = [r["start_s"] for r in runs]
    stops = [r["stop_s"] for r in runs]
    res = {"benchmark": "ray_start_stop", "command_line": " ".join([sys.executable] + sys.argv),
           "machine": info, "mode": mode, "ray_connect_retry_ms": args.ray_connect_retry_ms, "runs": runs,
           "start_s_median": statistics.median(starts), "stop_s_median": statistics.median(stops)}
    print(f"{mode}: start {', '.join(f'{s:.2f}' for s in starts)} s (median {res['start_s_median']:.2f}); "
          f"stop {', '.join(f'{s:.2f}' for s in stops)} s (median {res['stop_s_median']:.2f})")
    slowest = max(runs, key=lambda r: r["stop_s"])["kill_s_by_process"]
    print("slowest stop, by Ray process: " + ", ".join(f"{k} {v:.3f} s" for k, v in slowest.items()))
    write_json_out(args.json_out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
