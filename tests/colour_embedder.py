"""A deterministic embedder whose image and text embeddings share meaning: colours.

A frame embeds to (a softened) basis vector of its dominant colour; a text embeds to
the basis vector of the colour word it contains. Tests can then assert that "red"
finds the red part of a video. It has the interface of indexer.model.LoadedModel that
the indexer and the searcher use (encode_frames, encode_frame_groups, encode_text, tokenizer,
dim, ...).
"""

from __future__ import annotations

import numpy as np

COLOURS = {
    "red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "white": (255, 255, 255), "black": (0, 0, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255),
}
NAMES = list(COLOURS)


class _Tokenizer:
    context_length = 77

    def encode(self, text: str) -> list[int]:
        return list(range(len(text.split())))


class ColourEmbedder:
    dim = len(NAMES) + 1  # one axis per colour, plus one for "no colour word"
    image_size = 32
    logit_scale = 100.0
    model_id = "colour-test"

    def __init__(self) -> None:
        self.tokenizer = _Tokenizer()

    def _unit(self, v: np.ndarray) -> np.ndarray:
        return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)

    def encode_frames(self, frames: np.ndarray, batch_size: int = 32) -> np.ndarray:
        palette = np.array(list(COLOURS.values()), np.float32)
        means = frames.reshape(len(frames), -1, 3).astype(np.float32).mean(axis=1)
        dist = ((means[:, None, :] - palette[None]) ** 2).sum(-1)
        out = np.zeros((len(frames), self.dim), np.float32)
        out[:, :len(NAMES)] = np.exp(-dist / 2000.0)
        out[:, -1] = 0.05
        return self._unit(out)

    def encode_frame_groups(self, groups: list[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
        return [self.encode_frames(g, batch_size) for g in groups]

    def encode_text(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            words = text.lower().replace(".", " ").split()
            hits = [NAMES.index(w) for w in words if w in COLOURS]
            if hits:
                out[i, hits] = 1.0
            else:
                out[i, -1] = 1.0
        return self._unit(out)
