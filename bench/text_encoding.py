"""How much does stopping the text tower at the longest prompt save? (first runs, searches)

vidx encodes text in three places: the tag vocabularies (once per model and vocabulary, on
the first `vidx index` of a machine: every built-in label times every prompt template),
moderation policies, and each `vidx search` query (4 prompt templates). open_clip's CLIP
text tower runs all 77 context positions; vidx runs only up to the batch's longest prompt
(``indexer.model.trim_tokens`` / ``encode_tokens_causal``), which its causal mask makes
exact. This script measures both ways on ViT-B-32 (random weights: the cost of trained ones),
2 threads:

* ``LabelBank.build`` of the built-in vocabularies without a cache (what a first run
  encodes; batches of 256 prompts sorted by length, as vidx does), with the trimmed text
  forward off (open_clip's own ``encode_text``) and on, in alternating repeats;
* ``LoadedModel.encode_text`` of a 4-prompt search query, p50 of 30 calls each way;
* agreement: the lowest cosine between the two ways over every label vector.

Run:   .venv/bin/python bench/text_encoding.py [--repeats 2] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine_info, write_json_out  # noqa: E402

QUERY = "a cat playing with a ball"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats of the vocabulary encoding")
    ap.add_argument("--batch", type=int, default=256, help="LabelBank.build's batch (its default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    import numpy as np

    from indexer.model import LoadedModel, resolve_model
    from indexer.tagging import LabelBank, builtin_vocabularies
    from search.searcher import PROMPT_TEMPLATES

    model = LoadedModel(resolve_model("ViT-B-32", "random"), threads=args.threads)
    assert model.trim_text, "ViT-B-32 should have open_clip's causal CLIP text tower"
    vocabs = builtin_vocabularies()
    prompts = [p for v in vocabs for p in v.prompts()]
    tokens = model.tokenizer(prompts)

    def build_bank(trim: bool) -> tuple[float, np.ndarray]:
        model.trim_text = trim  # False: open_clip's own encode_text on the whole context
        t0 = time.perf_counter()
        bank = LabelBank.build(model, vocabs, cache_dir=None, batch_size=args.batch)
        return time.perf_counter() - t0, bank.matrix

    full_s, trim_s, cos_min = [], [], 1.0
    for _ in range(args.repeats):
        t, a = build_bank(False)
        full_s.append(t)
        t, b = build_bank(True)
        trim_s.append(t)
        cos_min = min(cos_min, float((a * b).sum(axis=1).min()))

    query = [t.format(QUERY) for t in PROMPT_TEMPLATES]
    q_full, q_trim = [], []
    for _ in range(30):
        for trim, sink in ((False, q_full), (True, q_trim)):
            model.trim_text = trim
            t0 = time.perf_counter()
            model.encode_text(query)
            sink.append(time.perf_counter() - t0)

    lengths = (tokens.argmax(dim=-1) + 1).numpy()
    result = {
        "model": "ViT-B-32 (random weights)", "threads": args.threads, "batch": args.batch,
        "vocabulary_prompts": len(prompts), "labels": sum(len(v.labels) for v in vocabs), "prompt_tokens_mean": float(lengths.mean()),
        "prompt_tokens_max": int(lengths.max()), "context_length": int(tokens.shape[1]),
        "vocabulary_full_s": full_s, "vocabulary_trimmed_s": trim_s,
        "vocabulary_speedup": statistics.median(full_s) / statistics.median(trim_s),
        "min_cosine_full_vs_trimmed": cos_min,
        "query_prompts": len(PROMPT_TEMPLATES),
        "query_full_ms_p50": 1000 * statistics.median(q_full),
        "query_trimmed_ms_p50": 1000 * statistics.median(q_trim),
        "machine": machine_info(),
    }
    print(f"vocabulary: {len(prompts)} prompts (mean {lengths.mean():.1f} tokens, max {lengths.max()} of "
          f"{tokens.shape[1]}): full context {statistics.median(full_s):.1f} s, trimmed "
          f"{statistics.median(trim_s):.1f} s ({result['vocabulary_speedup']:.1f}x); "
          f"lowest cosine {cos_min:.7f}")
    print(f"query ({len(PROMPT_TEMPLATES)} prompts) p50: full {result['query_full_ms_p50']:.1f} ms, "
          f"trimmed {result['query_trimmed_ms_p50']:.1f} ms")
    write_json_out(args.json_out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
