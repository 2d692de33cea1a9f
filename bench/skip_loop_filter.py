"""Would skipping the loop filter (deblocking) make decoding much cheaper?

libavcodec can skip the in-loop deblocking filter (``skip_loop_filter=all``): cheaper decoding,
slightly blockier frames. vidx decodes reference frames for shot detection (``skip_frame=NONREF``)
and takes its snippets from the same pass, so the frames the model sees would change too. This
script measures the decode-only CPU time, one thread, with and without the skip, for each file
given. Only the cost side is measured here, and that decides the question.

    .venv/bin/python bench/skip_loop_filter.py FILE [FILE ...] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import av


def decode_cpu_s(path: str, skip_frame: str, skip_loop_filter: bool) -> tuple[float, int]:
    container = av.open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.codec_context.thread_count = 1
        if skip_loop_filter:
            stream.codec_context.options = {"skip_loop_filter": "all"}
        stream.codec_context.skip_frame = skip_frame
        t0 = time.process_time()
        frames = sum(1 for _ in container.decode(stream))
        return time.process_time() - t0, frames
    finally:
        container.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(f"{'file':48} {'frames':>9} {'filter on (s)':>14} {'skipped (s)':>12} {'saved':>6}")
    for path in args.files:
        for skip_frame in ("NONREF", "DEFAULT"):
            on, off = [], []
            for _ in range(args.repeats):  # alternate, so drift in load hits both
                cpu, frames = decode_cpu_s(path, skip_frame, False)
                on.append(cpu)
                off.append(decode_cpu_s(path, skip_frame, True)[0])
            best_on, best_off = min(on), min(off)
            name = f"{path.rsplit('/', 1)[-1]} ({skip_frame})"
            print(f"{name:48} {frames:9d} {best_on:14.2f} {best_off:12.2f} {1 - best_off / best_on:6.0%}")


if __name__ == "__main__":
    main()
