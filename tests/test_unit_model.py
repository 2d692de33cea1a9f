"""Unit tests for indexer.model: resolving weights, loading, embeddings, offline failure, consensus."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_MODEL
from indexer.model import (ModelSpec, ModelUnavailable, LoadedModel, _CONFIG_DIR, consensus,
                           resolve_model)

DIM = 32  # embed_dim of model_configs/vidx-tiny.json


@pytest.fixture(scope="module")
def random_spec() -> ModelSpec:
    return resolve_model(TINY_MODEL, "random")


@pytest.fixture(scope="module")
def random_model(random_spec) -> LoadedModel:
    return LoadedModel(random_spec)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    rng = np.random.default_rng(42)
    return rng.integers(0, 256, size=(5, 48, 64, 3), dtype=np.uint8)


TEXTS = ["a dog on a skateboard", "a red car", "fire in a stove"]


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


def save_state_dict(model, path: Path) -> Path:
    import torch

    torch.save(model.state_dict(), path)
    return path


def fresh_tiny(seed: int):
    import open_clip
    import torch

    torch.manual_seed(seed)
    return open_clip.create_model(TINY_MODEL, pretrained=None)


@pytest.fixture(scope="module")
def seed0_file(ckpt_dir, random_model) -> Path:
    return save_state_dict(random_model.model, ckpt_dir / "seed0.pt")


# -- random weights ---------------------------------------------------------------------------------

def test_resolve_random(random_spec):
    assert random_spec.name == TINY_MODEL
    assert random_spec.is_random
    assert random_spec.weights == ""
    assert random_spec.model_id == "vidx-tiny|random:0"


def test_random_unknown_model():
    with pytest.raises(ModelUnavailable, match="unknown model 'no-such-arch'"):
        resolve_model("no-such-arch", "random")


def test_loaded_model_attributes(random_model):
    assert random_model.dim == DIM
    assert random_model.image_size == 32
    assert random_model.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)  # open_clip's init value
    assert not random_model.model.training


def test_image_embeddings_normalised(random_model, frames):
    emb = random_model.encode_frames(frames)
    assert emb.shape == (5, DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # different pictures, different vectors
    assert np.abs(emb[0] - emb[1]).max() > 1e-3


def test_text_embeddings_normalised(random_model):
    emb = random_model.encode_text(TEXTS)
    assert emb.shape == (3, DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3


def test_encode_no_frames(random_model):
    emb = random_model.encode_frames(np.zeros((0, 32, 32, 3), np.uint8))
    assert emb.shape == (0, DIM)


def test_batching_does_not_change_results(random_model, frames):
    whole = random_model.encode_frames(frames, batch_size=32)
    pieces = random_model.encode_frames(frames, batch_size=2)
    np.testing.assert_allclose(whole, pieces, atol=1e-5)


def test_frame_groups_of_any_sizes_share_batches_with_the_same_results(random_model):
    # Short videos give small chunks of their own frame size; the model runs them together.
    rng = np.random.default_rng(7)
    groups = [rng.integers(0, 256, size=shape, dtype=np.uint8)
              for shape in [(3, 48, 64, 3), (5, 40, 80, 3), (1, 48, 48, 3), (0, 48, 64, 3), (6, 64, 40, 3)]]
    together = random_model.encode_frame_groups(groups, batch_size=4)  # batches cross groups
    assert [len(v) for v in together] == [3, 5, 1, 0, 6]
    for group, vectors in zip(groups, together):
        np.testing.assert_allclose(vectors, random_model.encode_frames(group, batch_size=32), atol=1e-5)
    assert random_model.encode_frame_groups([], batch_size=4) == []


def test_preprocess_shape(random_model, frames):
    x = random_model.preprocess_frames(frames[:2])
    assert tuple(x.shape) == (2, 3, 32, 32)


@pytest.mark.parametrize("shape", [(4, 32, 57, 3), (3, 57, 32, 3), (2, 32, 32, 3), (2, 33, 40, 3), (2, 48, 64, 3)])
def test_batch_preprocessing_equals_open_clip_transform(random_model, shape):
    """The batched crop+normalise path gives exactly what open_clip's own transform gives
    (frames not at the model's size take the transform itself)."""
    import torch
    from PIL import Image

    assert random_model._batch_transform is not None and random_model._batch_transform[0] == 32
    f = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    expected = torch.stack([random_model.preprocess(Image.fromarray(x)) for x in f])
    assert torch.equal(random_model.preprocess_frames(f), expected)


def test_unusual_transform_is_used_as_it_is():
    from torchvision import transforms as T

    from indexer.model import _batch_transform_of

    standard = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32),
                          T.Lambda(lambda im: im), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    assert _batch_transform_of(standard) is None  # a Lambda is not a known RGB conversion
    squash = T.Compose([T.Resize((32, 32), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32),
                        T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    assert _batch_transform_of(squash) is None


def test_same_seed_same_embeddings_across_loads(random_spec, random_model, frames):
    import torch

    torch.manual_seed(999)  # global RNG state must not matter
    again = LoadedModel(random_spec)
    np.testing.assert_array_equal(again.encode_frames(frames), random_model.encode_frames(frames))
    np.testing.assert_array_equal(again.encode_text(TEXTS), random_model.encode_text(TEXTS))


# -- checkpoint files and folders ---------------------------------------------------------------------

def test_checkpoint_file_reproduces_embeddings(seed0_file, random_model, frames):
    spec = resolve_model(TINY_MODEL, str(seed0_file))
    assert spec.weights == str(seed0_file.resolve())
    assert "file:" in spec.model_id and spec.model_id.startswith("vidx-tiny|")
    assert not spec.is_random
    loaded = LoadedModel(spec)
    np.testing.assert_allclose(loaded.encode_frames(frames), random_model.encode_frames(frames), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_text(TEXTS), random_model.encode_text(TEXTS), atol=1e-6)


def test_model_id_stable_for_same_file_and_copy(seed0_file, ckpt_dir):
    a = resolve_model(TINY_MODEL, str(seed0_file)).model_id
    assert resolve_model(TINY_MODEL, str(seed0_file)).model_id == a
    copy = ckpt_dir / "copy_of_seed0.pt"
    shutil.copyfile(seed0_file, copy)
    assert resolve_model(TINY_MODEL, str(copy)).model_id == a


def test_other_weights_other_model_id_and_embeddings(seed0_file, ckpt_dir, random_model, frames):
    other = save_state_dict(fresh_tiny(123), ckpt_dir / "seed123.pt")
    spec0 = resolve_model(TINY_MODEL, str(seed0_file))
    spec1 = resolve_model(TINY_MODEL, str(other))
    assert spec1.model_id != spec0.model_id
    emb1 = LoadedModel(spec1).encode_frames(frames)
    assert np.abs(emb1 - random_model.encode_frames(frames)).max() > 1e-3


def test_model_id_changes_when_file_is_rewritten_in_place(ckpt_dir):
    path = ckpt_dir / "rewritten.pt"
    save_state_dict(fresh_tiny(1), path)
    before = resolve_model(TINY_MODEL, str(path)).model_id
    save_state_dict(fresh_tiny(2), path)
    assert resolve_model(TINY_MODEL, str(path)).model_id != before


def test_model_id_changes_when_middle_of_torch_checkpoint_changes(ckpt_dir, seed0_file):
    """torch.save writes a zip whose central directory (in the hashed tail) holds every entry's CRC."""
    import torch

    sd = torch.load(seed0_file)
    sd["token_embedding.weight"][10_000:40_000] += 1.0  # bytes ~1.5-5.3 MiB into a 6.5 MiB file
    (ckpt_dir / "edited").mkdir()
    edited = ckpt_dir / "edited" / seed0_file.name  # torch.save names the archive after the file
    torch.save(sd, edited)
    assert edited.stat().st_size == seed0_file.stat().st_size
    assert resolve_model(TINY_MODEL, str(edited)).model_id != resolve_model(TINY_MODEL, str(seed0_file)).model_id


def test_model_id_changes_when_middle_of_safetensors_changes(ckpt_dir, seed0_file):
    import torch
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in torch.load(seed0_file).items()}
    (ckpt_dir / "st_a").mkdir()
    (ckpt_dir / "st_b").mkdir()
    a = ckpt_dir / "st_a" / "open_clip_model.safetensors"
    b = ckpt_dir / "st_b" / "open_clip_model.safetensors"
    save_file(sd, str(a))
    sd["token_embedding.weight"][10_000:40_000] += 1.0
    save_file(sd, str(b))
    assert a.stat().st_size == b.stat().st_size > 4 << 20
    assert a.read_bytes() != b.read_bytes()
    assert resolve_model(TINY_MODEL, str(b)).model_id != resolve_model(TINY_MODEL, str(a)).model_id


def test_folder_with_one_checkpoint(seed0_file, ckpt_dir, random_model, frames):
    folder = ckpt_dir / "one"
    folder.mkdir()
    shutil.copyfile(seed0_file, folder / "weights.pt")
    (folder / "README.txt").write_text("not a checkpoint")
    spec = resolve_model(TINY_MODEL, str(folder))
    assert spec.weights == str((folder / "weights.pt").resolve())
    assert "file:" in spec.model_id
    assert spec.model_id == resolve_model(TINY_MODEL, str(seed0_file)).model_id
    np.testing.assert_allclose(LoadedModel(spec).encode_frames(frames), random_model.encode_frames(frames),
                               atol=1e-6)


def test_folder_prefers_hub_file_names(seed0_file, ckpt_dir):
    folder = ckpt_dir / "several"
    folder.mkdir()
    shutil.copyfile(seed0_file, folder / "a_first.pt")
    shutil.copyfile(seed0_file, folder / "open_clip_pytorch_model.bin")
    spec = resolve_model(TINY_MODEL, str(folder))
    assert spec.weights.endswith("open_clip_pytorch_model.bin")


def test_hub_style_folder_with_config(seed0_file, ckpt_dir, random_model, frames):
    folder = ckpt_dir / "hub"
    folder.mkdir()
    cfg = json.loads((_CONFIG_DIR / "vidx-tiny.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]}}))
    shutil.copyfile(seed0_file, folder / "open_clip_pytorch_model.bin")
    spec = resolve_model(TINY_MODEL, str(folder))
    assert spec.weights == str(folder.resolve())
    assert spec.model_id.startswith("local-dir|")
    loaded = LoadedModel(spec)
    assert loaded.dim == DIM
    np.testing.assert_allclose(loaded.encode_frames(frames), random_model.encode_frames(frames), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_text(TEXTS), random_model.encode_text(TEXTS), atol=1e-6)


def test_hub_style_folder_without_weights(ckpt_dir):
    folder = ckpt_dir / "hub_empty"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match="no weights file"):
        resolve_model(TINY_MODEL, str(folder))


def test_empty_folder(ckpt_dir):
    folder = ckpt_dir / "empty"
    folder.mkdir()
    with pytest.raises(ModelUnavailable, match="no checkpoint") as err:
        resolve_model(TINY_MODEL, str(folder))
    assert "--pretrained" in str(err.value)


@pytest.mark.parametrize("given", ["/definitely/not/here/model.bin", "weights_missing.safetensors",
                                   "some/dir/ckpt"])
def test_missing_file_says_how_to_supply(given):
    with pytest.raises(ModelUnavailable) as err:
        resolve_model(TINY_MODEL, given)
    msg = str(err.value)
    assert f"weights file {given} does not exist" in msg
    assert "--pretrained /path/to/file-or-folder" in msg
    assert "--pretrained random" in msg


def test_wrong_architecture_checkpoint(ckpt_dir, seed0_file):
    import torch

    sd = torch.load(seed0_file)
    sd["visual.proj"] = torch.zeros(16, DIM)
    bad = ckpt_dir / "wrong_shape.pt"
    torch.save(sd, bad)
    with pytest.raises(ModelUnavailable, match="Check that --model matches"):
        LoadedModel(resolve_model(TINY_MODEL, str(bad)))


def test_truncated_torch_checkpoint(ckpt_dir, seed0_file):
    data = seed0_file.read_bytes()
    bad = ckpt_dir / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelUnavailable, match="cannot load"):
        LoadedModel(resolve_model(TINY_MODEL, str(bad)))


def test_garbage_checkpoint_is_model_unavailable(ckpt_dir):
    bad = ckpt_dir / "garbage.pt"
    bad.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(ModelUnavailable):
        LoadedModel(resolve_model(TINY_MODEL, str(bad)))


def test_truncated_safetensors_is_model_unavailable(ckpt_dir, seed0_file):
    import torch
    from safetensors.torch import save_file

    good = ckpt_dir / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in torch.load(seed0_file).items()}, str(good))
    bad = ckpt_dir / "partial.safetensors"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ModelUnavailable):
        LoadedModel(resolve_model(TINY_MODEL, str(bad)))


def test_safetensors_checkpoint_loads(ckpt_dir, seed0_file, random_model, frames):
    import torch
    from safetensors.torch import save_file

    path = ckpt_dir / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in torch.load(seed0_file).items()}, str(path))
    spec = resolve_model(TINY_MODEL, str(path))
    np.testing.assert_allclose(LoadedModel(spec).encode_frames(frames), random_model.encode_frames(frames),
                               atol=1e-6)


# -- pretrained tags, offline ----------------------------------------------------------------------

@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """No cached hub weights and no ~/.cache/clip, whatever this machine has."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_default_model_offline_fails_fast_with_instructions(empty_hf_cache):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        resolve_model("ViT-B-32", "laion2b_s34b_b79k")
    assert time.monotonic() - t0 < 15
    msg = str(err.value)
    assert "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg
    assert "--pretrained random" in msg
    assert "--pretrained /path" in msg


def test_unreachable_hub_fails_fast(empty_hf_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable, match="cannot be reached") as err:
        resolve_model("ViT-B-32", "laion2b_s34b_b79k")
    assert time.monotonic() - t0 < 15
    assert "127.0.0.1" in str(err.value)


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ModelUnavailable) as err:
        resolve_model("ViT-B-32", "no_such_tag")
    msg = str(err.value)
    assert "'no_such_tag' is not a pretrained tag of ViT-B-32" in msg
    assert "known tags:" in msg
    assert "laion2b_s34b_b79k" in msg and "openai" in msg


def test_unknown_tag_of_model_without_tags():
    with pytest.raises(ModelUnavailable, match="known tags: none"):
        resolve_model(TINY_MODEL, "no_such_tag")


def test_unknown_model_with_tag():
    with pytest.raises(ModelUnavailable, match="unknown model 'no-such-arch'"):
        resolve_model("no-such-arch", "some_tag")


# -- consensus -------------------------------------------------------------------------------------

def test_consensus_is_normalised_mean():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(4, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    c = consensus(v)
    expected = v.mean(0) / np.linalg.norm(v.mean(0))
    np.testing.assert_allclose(c, expected, atol=1e-6)
    assert c.dtype == np.float32
    assert np.linalg.norm(c) == pytest.approx(1.0, abs=1e-6)


def test_consensus_simple_values():
    e = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(consensus(e[:2]), [2 ** -0.5, 2 ** -0.5, 0], atol=1e-7)
    np.testing.assert_allclose(consensus(e[:1]), [1, 0, 0])
    np.testing.assert_allclose(consensus(np.stack([e[2], e[2]])), [0, 0, 1])


def test_consensus_of_opposite_vectors_is_zero_not_nan():
    v = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    c = consensus(v)
    assert np.all(np.isfinite(c))
    np.testing.assert_array_equal(c, [0.0, 0.0])


def test_consensus_accepts_float64():
    c = consensus(np.array([[3.0, 4.0]]))
    assert c.dtype == np.float32
    np.testing.assert_allclose(c, [0.6, 0.8], atol=1e-7)


# -- resolving without importing torch/open_clip (the indexing driver's start-up) ------------------

def test_model_configs_read_directly_match_open_clip():
    import open_clip

    from indexer.model import _model_configs, _register_vidx_configs

    _register_vidx_configs()
    configs = _model_configs()
    assert set(configs) == set(open_clip.list_models())
    for name in ("ViT-B-32", "ViT-L-14-336", TINY_MODEL):
        assert configs[name]["vision_cfg"]["image_size"] == open_clip.get_model_config(name)["vision_cfg"]["image_size"]


def test_pretrained_registry_is_cached_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    from open_clip import pretrained as oc_pretrained

    from indexer.model import _pretrained_cfg

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg, tags = _pretrained_cfg("ViT-B-32", "LAION2B-S34B-B79K")  # tags normalised as open_clip does
    expected = oc_pretrained.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")
    assert cfg == {"hf_hub": expected.get("hf_hub", ""), "url": expected.get("url", "")} and cfg["hf_hub"]
    assert set(tags) == set(oc_pretrained.list_pretrained_tags_by_model("ViT-B-32"))
    cached = list((tmp_path / "vidx").glob("open_clip-*-pretrained.json"))
    assert len(cached) == 1
    assert _pretrained_cfg("ViT-B-32", "no-such-tag") == ({}, tags)
    cached[0].write_text("{not json")
    assert _pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")[0] == cfg
    assert json.loads(cached[0].read_text())["ViT-B-32"]["laion2b_s34b_b79k"] == cfg


def test_resolving_a_model_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys\n"
            "from indexer.model import ModelUnavailable, resolve_model\n"
            "spec = resolve_model('ViT-B-32', 'random')\n"
            "assert spec.image_size == 224, spec\n"
            "try:\n"
            "    resolve_model('ViT-B-32', 'laion2b_s34b_b79k')\n"
            "except ModelUnavailable as exc:\n"
            "    assert '--pretrained' in str(exc)\n"
            "else:\n"
            "    raise SystemExit('weights should be missing here')\n"
            "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    root = Path(__file__).resolve().parents[1]
    runs = [subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                           timeout=120) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    # The first process builds the pretrained-registry cache (that imports open_clip); the next
    # one resolves from files alone.
    assert runs[1].stdout.strip() == "[]", runs[1].stdout


# -- text: the trimmed causal context ----------------------------------------------------------

def _full_context_text(model: LoadedModel, texts: list[str]) -> np.ndarray:
    """open_clip's own encode_text over the whole 77-token context (the reference)."""
    import torch

    with torch.inference_mode():
        feats = model.model.encode_text(model.tokenizer(texts)).float()
        return torch.nn.functional.normalize(feats, dim=-1).numpy()


LONG_TEXTS = ["x", "a dog", "a very long description of a person riding a bicycle along a busy road at night"]


def test_text_runs_on_the_trimmed_context_with_the_full_context_result(random_model):
    from indexer.model import has_causal_clip_text, trim_tokens

    assert has_causal_clip_text(random_model.model)
    tokens = random_model.tokenizer(LONG_TEXTS)
    assert trim_tokens(tokens).shape[1] == int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1]
    for texts in (LONG_TEXTS, LONG_TEXTS[:2], ["a red car"]):
        np.testing.assert_allclose(random_model.encode_text(texts), _full_context_text(random_model, texts),
                                   atol=2e-6)


def test_text_towers_that_are_not_causal_clip_run_unchanged(random_spec):
    import torch

    from indexer.model import has_causal_clip_text

    model = LoadedModel(random_spec)
    model.model.text_pool_type = "last"  # reads the last position: trimming would change it
    assert not has_causal_clip_text(model.model)
    model.model.text_pool_type = "argmax"
    model.model.attn_mask = torch.zeros_like(model.model.attn_mask)  # bidirectional attention
    assert not has_causal_clip_text(model.model)
    model.trim_text = has_causal_clip_text(model.model)
    np.testing.assert_allclose(model.encode_text(LONG_TEXTS), _full_context_text(model, LONG_TEXTS), atol=2e-6)


def test_fast_text_encoder_matches_the_model_and_old_cache_files_are_replaced(random_model, tmp_path,
                                                                              monkeypatch):
    from indexer.model import _text_cache_path, export_fast_text_encoder, load_fast_text_encoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model_id = random_model.spec.model_id
    assert load_fast_text_encoder(model_id) is None
    path = export_fast_text_encoder(random_model)
    assert path == _text_cache_path(model_id)
    fast = load_fast_text_encoder(model_id)
    assert fast is not None and fast.trim
    # one trace, traced on a short example, serves every trimmed length
    for texts in (LONG_TEXTS, ["a red car"], ["x"]):
        np.testing.assert_allclose(fast.encode_text(texts), _full_context_text(random_model, texts), atol=2e-6)
    meta = json.loads(Path(path + ".json").read_text())
    del meta["format"]  # a file written by an older vidx (traced on the full context)
    Path(path + ".json").write_text(json.dumps(meta))
    assert load_fast_text_encoder(model_id) is None


# --- precision of the image tower


@pytest.mark.parametrize("flags, expected", [("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
                                             ("fpu avx2 amx_bf16 amx_tile", True),
                                             ("fpu sse4_2 avx2 fma", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    from indexer.model import native_bf16_cpu

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert native_bf16_cpu(str(info)) is expected
    assert native_bf16_cpu(str(tmp_path / "missing")) is False  # not Linux: float32


def test_auto_precision_picks_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    from indexer import model as model_module

    monkeypatch.setattr(model_module, "native_bf16_cpu", lambda: True)
    assert model_module.image_precision("auto", "cpu") == "bf16"
    assert model_module.image_precision("auto", "cuda") == "fp32"
    assert model_module.image_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(model_module, "native_bf16_cpu", lambda: False)
    assert model_module.image_precision("auto", "cpu") == "fp32"
    assert model_module.image_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        model_module.image_precision("fp16", "cpu")


def test_bf16_image_tower_agrees_with_float32(random_spec, frames):
    import torch

    full = LoadedModel(random_spec, precision="fp32")
    half = LoadedModel(random_spec, precision="bf16")
    assert (full.precision, half.precision) == ("fp32", "bf16")
    np.testing.assert_array_equal(full.encode_text(TEXTS), half.encode_text(TEXTS))  # before any image
    a, b = full.encode_frames(frames), half.encode_frames(frames)
    assert next(half.model.visual.parameters()).dtype == torch.bfloat16  # cast on first use
    assert next(half.model.transformer.parameters()).dtype == torch.float32  # text stays float32
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert np.sum(a * b, axis=1).min() > 0.999
    assert not np.array_equal(a, b)  # it did run in bfloat16
    np.testing.assert_array_equal(full.encode_text(TEXTS), half.encode_text(TEXTS))


def test_hub_style_folder_with_a_weights_name_open_clip_does_not_read(seed0_file, ckpt_dir):
    # open_clip's local-dir loader looks for *.safetensors / *.bin / *.pth only: a lone *.pt
    # beside the config would have been skipped, leaving a silently random model.
    folder = ckpt_dir / "hub_pt"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": json.loads((_CONFIG_DIR / "vidx-tiny.json").read_text())}))
    shutil.copyfile(seed0_file, folder / "model.pt")
    with pytest.raises(ModelUnavailable, match="no weights file"):
        resolve_model(TINY_MODEL, str(folder))


def test_random_fills_are_skipped_only_while_building_from_a_checkpoint():
    import torch

    from indexer.model import _random_init_skipped

    def build() -> tuple[torch.nn.Module, bool]:
        before = torch.random.get_rng_state()
        module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64),
                                     torch.nn.MultiheadAttention(64, 4))
        return module, not torch.equal(before, torch.random.get_rng_state())

    with _random_init_skipped(torch):
        skipped, drew = build()
    assert not drew  # no random number was drawn for the weights ...
    assert torch.equal(skipped[1].weight, torch.ones(64))  # ... but constants were set
    assert torch.equal(skipped[2].in_proj_bias, torch.zeros(3 * 64))
    _, drew = build()
    assert drew  # outside the block, modules initialise as usual
    with _random_init_skipped(torch, skip=False):
        _, drew = build()
    assert drew
