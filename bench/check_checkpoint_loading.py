"""Check, per open_clip architecture, that loading a checkpoint with random init skipped
(``indexer.model._random_init_skipped``) gives the model that wrote it.

For each architecture named: build it with seeded random weights, save its state dict, load
that file with ``LoadedModel`` (float32), and compare every parameter and buffer (persistent
or not, e.g. causal masks and rotary tables) and the image and text embeddings of a few inputs.
Not a timing benchmark; it prints one line per architecture.

Run:   .venv/bin/python bench/check_checkpoint_loading.py RN50 ViT-B-32 EVA02-B-16 ...
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import open_clip  # noqa: E402
import torch  # noqa: E402

from indexer.model import LoadedModel, _register_vidx_configs, resolve_model  # noqa: E402


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check(name: str) -> bool:
    """True when ``name`` loaded from its own checkpoint equals the model that wrote it."""
    logging.disable(logging.WARNING)  # open_clip's "No pretrained weights loaded": intended here
    torch.manual_seed(1)
    ref = open_clip.create_model(name, pretrained=None).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(Path(tmp) / "weights.pt")
        torch.save(ref.state_dict(), ckpt)
        loaded = LoadedModel(resolve_model(name, ckpt), precision="fp32")
    model = loaded.model
    same_state = _same(ref.state_dict(), model.state_dict())
    same_buffers = _same(dict(ref.named_buffers()), dict(model.named_buffers()))
    images = torch.rand(2, 3, loaded.image_size, loaded.image_size)
    tokens = loaded.tokenizer(["a cat", "two dogs on a beach"])
    with torch.no_grad():
        same_image = torch.allclose(ref.encode_image(images), model.encode_image(images), atol=1e-5)
        same_text = torch.allclose(ref.encode_text(tokens), model.encode_text(tokens), atol=1e-5)
    print(f"{name:28s} state {same_state} buffers {same_buffers} image {same_image} text {same_text}", flush=True)
    return same_state and same_buffers and same_image and same_text


def main(names: list[str]) -> int:
    _register_vidx_configs()
    ok = True
    for name in names:
        try:
            ok = check(name) and ok
        except Exception as exc:  # noqa: BLE001 - e.g. an optional dependency missing: report, go on
            print(f"{name:28s} not checked: {type(exc).__name__}: {str(exc)[:150]}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
