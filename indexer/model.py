"""open_clip models: finding weights, loading once, embedding images and text.

Weights come from (in this order of checking):
  * ``random``: seeded random weights, for benchmarks and smoke tests only (loud warning);
  * a checkpoint file, or a directory holding one (``open_clip_config.json`` + weights,
    as published on model hubs, or a lone ``*.safetensors``/``*.bin``/``*.pt``);
  * an open_clip pretrained tag (e.g. ``laion2b_s34b_b79k``): the local cache first, then a
    download on first use. When the hub cannot be reached we stop within seconds with a
    message that says how to supply weights, before any work is done.

Preprocessing travels with the weights: the image transform is open_clip's own
for that model. Every vector stored records ``ModelInfo.model_id``.

Precision: the image tower runs in bfloat16 on CPUs with bfloat16 dot-product instructions
(AVX512-BF16, AMX), where ViT-B-32 embedded frames 3.4x faster than in float32, with
embeddings at cosine >= 0.99994 to the float32 ones (``bench/bf16_image_tower.py``, random
weights); elsewhere, and for text, float32.
The setting ``precision`` (auto, fp32, bf16) overrides the choice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from indexer.config import PRECISIONS, user_cache_dir

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).with_name("model_configs")
RANDOM = "random"
_RANDOM_SEED = 0
_HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# What open_clip's "local-dir:" loader looks for beside open_clip_config.json.
_LOCAL_DIR_SUFFIXES = (".safetensors", ".bin", ".pth")


def native_bf16_cpu(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (Linux ``avx512_bf16`` or
    ``amx_bf16``). Without them torch emulates bfloat16, slower than float32."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def image_precision(requested: str, device: str) -> str:
    """The precision the image tower runs in: ``requested`` unless it is ``auto``, which picks
    bf16 on a CPU that has native bfloat16 instructions and fp32 otherwise (GPUs included:
    vidx has not been measured on one in bfloat16)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "bf16" if device == "cpu" and native_bf16_cpu() else "fp32"


class ModelUnavailable(RuntimeError):
    """Weights cannot be found or loaded; the message says how to supply them."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load; resolved by ``resolve_model`` into a ModelSpec with a local ``weights``."""

    name: str
    pretrained: str
    weights: str = ""  # resolved local file or directory ("" for random)
    model_id: str = ""  # stable identity recorded with every vector
    image_size: int = 224  # model input size from its config: decode straight to it

    @property
    def is_random(self) -> bool:
        return self.pretrained == RANDOM


def _register_vidx_configs() -> None:
    import open_clip

    if "vidx-tiny" not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


_MODEL_CONFIGS: dict[str, dict] | None = None


def _model_configs() -> dict[str, dict]:
    """open_clip's architecture configs (its model_configs/*.json plus ours), read as open_clip
    reads them but without importing it: resolving a model in the driver should not cost the
    seconds that importing torch and open_clip takes (the model workers import them anyway)."""
    global _MODEL_CONFIGS
    if _MODEL_CONFIGS is None:
        import importlib.util
        import json

        spec = importlib.util.find_spec("open_clip")
        dirs = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
        configs: dict[str, dict] = {}
        for folder in [*dirs, _CONFIG_DIR]:
            for path in sorted(folder.glob("*.json")):
                with open(path) as fh:
                    cfg = json.load(fh)
                if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
                    configs[path.stem] = cfg
        _MODEL_CONFIGS = configs
    return _MODEL_CONFIGS


def _pretrained_cfg(name: str, tag: str) -> tuple[dict, list[str]]:
    """open_clip's download source for (model, tag) -- ({"hf_hub", "url"}, or {} if unknown) --
    and the model's known tags. The registry is copied once per open_clip version to the
    cache, so later runs read a small JSON file instead of importing open_clip."""
    import json
    from importlib.metadata import PackageNotFoundError, version

    try:
        oc_version = version("open_clip_torch")
    except PackageNotFoundError:
        oc_version = "unknown"
    path = user_cache_dir(f"open_clip-{oc_version}-pretrained.json")
    registry = None
    try:
        with open(path) as fh:
            registry = json.load(fh)
    except (OSError, ValueError):
        pass
    if not isinstance(registry, dict):
        from open_clip import pretrained as oc_pretrained

        registry = {model: {t: {k: oc_pretrained.get_pretrained_cfg(model, t).get(k, "") for k in ("hf_hub", "url")}
                            for t in oc_pretrained.list_pretrained_tags_by_model(model)}
                    for model in {m for m, _ in oc_pretrained.list_pretrained()}}
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as fh:
                json.dump(registry, fh)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home: resolved again next time
    tags = registry.get(name, {})
    return tags.get(tag.lower().replace("-", "_"), {}), list(tags)


def _digest_cache_path() -> str:
    return user_cache_dir("checkpoint-digests.json")


def _file_digest(path: str) -> str:
    """Identity of a checkpoint file: BLAKE2b of its whole content.

    Weights that differ anywhere are a different model, so nothing short of the whole file
    will do. Hashing costs about a second per GB, so the digest is cached by (path, size,
    mtime) in the user cache: a no-change ``vidx index`` does not re-read the file.
    """
    import json

    st = os.stat(path)
    key = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = _digest_cache_path()
    try:
        with open(cache_file) as fh:
            cache = json.load(fh)
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    cache[key] = digest.hexdigest()
    try:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        tmp = f"{cache_file}.{os.getpid()}"
        with open(tmp, "w") as fh:
            json.dump(dict(list(cache.items())[-256:]), fh)
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only home only costs re-hashing next time
    return cache[key]


def _find_checkpoint(folder: Path, suffixes: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth")) -> Path | None:
    found = sorted(p for ext in suffixes for p in folder.glob("*" + ext))
    preferred = [p for p in found if p.name in _HF_FILENAMES]
    return (preferred or found or [None])[0]


def _how_to_supply(name: str, pretrained: str) -> str:
    return (
        f"How to supply weights for {name}:\n"
        f"  * on a machine with internet, run vidx once (weights are cached under ~/.cache/huggingface),\n"
        f"    then copy that cache (or set HF_HOME to a shared copy) on offline machines;\n"
        f"  * or download the checkpoint (open_clip_pytorch_model.bin / open_clip_model.safetensors)\n"
        f"    and pass --pretrained /path/to/file-or-folder (config key 'pretrained', env VIDX_PRETRAINED);\n"
        f"  * for a smoke test or benchmark only: --pretrained random (search results will be meaningless)."
    )


def _hub_reachable(url: str, timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    parsed = urlparse(url)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _cached_or_download(name: str, tag: str) -> str:
    cfg, tags = _pretrained_cfg(name, tag)
    if not cfg:
        if not tags and name not in _model_configs():
            raise ModelUnavailable(f"unknown model '{name}'; see open_clip.list_models() for names")
        raise ModelUnavailable(
            f"'{tag}' is not a pretrained tag of {name} nor an existing file or folder; "
            f"known tags: {', '.join(tags) or 'none'}")
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub.rstrip("/")) if not hf_hub.endswith("/") else (hf_hub.rstrip("/"), "")
        for candidate in ([filename] if filename else list(_HF_FILENAMES)):
            hit = try_to_load_from_cache(repo_id=repo_id, filename=candidate)
            if isinstance(hit, str) and os.path.exists(hit):
                return hit
    url = cfg.get("url", "")
    if url:
        cached = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(urlparse(url).path))
        if os.path.exists(cached):
            return cached
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hf_hub else url
    if not _hub_reachable(endpoint):
        raise ModelUnavailable(
            f"weights for {name} ({tag}) are not in the local cache and {urlparse(endpoint).hostname} "
            f"cannot be reached (offline?).\n" + _how_to_supply(name, tag))
    log.info("downloading %s (%s) weights; this happens once", name, tag)
    from open_clip import pretrained as oc_pretrained

    try:
        path = oc_pretrained.download_pretrained(oc_pretrained.get_pretrained_cfg(name, tag))
    except Exception as exc:  # network errors come in many types from several libraries
        raise ModelUnavailable(f"downloading weights for {name} ({tag}) failed: {exc}\n"
                               + _how_to_supply(name, tag)) from None
    if not path:
        raise ModelUnavailable(f"no download source for {name} ({tag}).\n" + _how_to_supply(name, tag))
    return path


def _config_image_size(name: str, folder: str | None = None) -> int:
    import json

    if folder:
        with open(os.path.join(folder, "open_clip_config.json")) as fh:
            cfg = json.load(fh).get("model_cfg", {})
    else:
        cfg = _model_configs().get(name) or {}
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def resolve_model(name: str, pretrained: str) -> ModelSpec:
    """Find the weights for (name, pretrained) locally, downloading if needed; fail fast."""
    import dataclasses

    spec = _resolve_weights(name, pretrained)
    folder = spec.weights if spec.weights and os.path.isdir(spec.weights) else None
    return dataclasses.replace(spec, image_size=_config_image_size(name, folder))


def _resolve_weights(name: str, pretrained: str) -> ModelSpec:
    if pretrained == RANDOM:
        if name not in _model_configs():
            raise ModelUnavailable(f"unknown model '{name}'; see open_clip.list_models() for names")
        return ModelSpec(name, pretrained, "", f"{name}|random:{_RANDOM_SEED}")
    path = Path(os.path.expanduser(pretrained))
    if path.is_dir():
        if (path / "open_clip_config.json").exists():
            ckpt = _find_checkpoint(path, _LOCAL_DIR_SUFFIXES)
            if ckpt is None:
                raise ModelUnavailable(
                    f"{path} has open_clip_config.json but no weights file that open_clip reads from such a "
                    f"folder ({', '.join('*' + s for s in _LOCAL_DIR_SUFFIXES)}); rename the checkpoint, or "
                    f"pass the checkpoint file itself with --pretrained")
            return ModelSpec(name, pretrained, str(path.resolve()), f"local-dir|{_file_digest(str(ckpt))}")
        ckpt = _find_checkpoint(path)
        if ckpt is None:
            raise ModelUnavailable(f"no checkpoint (*.safetensors, *.bin, *.pt) in folder {path}.\n"
                                   + _how_to_supply(name, pretrained))
        path = ckpt
    if path.is_file():
        return ModelSpec(name, pretrained, str(path.resolve()), f"{name}|file:{_file_digest(str(path))}")
    if os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors")):
        raise ModelUnavailable(f"weights file {pretrained} does not exist.\n" + _how_to_supply(name, pretrained))
    weights = _cached_or_download(name, pretrained)
    return ModelSpec(name, pretrained, weights, f"{name}|{pretrained}")


def warn_if_random(spec: ModelSpec) -> None:
    if spec.is_random:
        log.warning("%s has RANDOM weights (--pretrained random): vectors carry no meaning and search "
                    "results will be meaningless. Use only for benchmarks and smoke tests.", spec.name)


def warn_if_random_index(name: str, pretrained: str) -> None:
    """The same warning for commands that read an index built with random weights (search, tags,
    moderation): their results are as meaningless as its vectors."""
    if pretrained == RANDOM:
        log.warning("this index was built with %s with RANDOM weights (--pretrained random): its vectors "
                    "carry no meaning, so these results are meaningless. Re-index with real weights "
                    "('vidx index --reset FOLDER') for real results.", name)


def _strict_checkpoint(path: str) -> bool:
    """open_clip loads this file with ``load_state_dict(strict=True)``: every parameter and
    persistent buffer comes from it. Not so for big_vision ``.npz``/``.npy`` (its own converter)."""
    return not path.endswith((".npz", ".npy"))


@contextmanager
def _random_init_skipped(torch, skip: bool = True) -> Iterator[None]:
    """While a model is built: ``torch.nn.init``'s random fills (and the tensor methods they
    use) return their tensor untouched, leaving ``torch.empty`` memory for the checkpoint to
    overwrite. Only random fills are skipped: constants and computed buffers (e.g. a causal
    attention mask) are built as usual. Torch function modes are per thread, so a model built
    meanwhile in another thread is unaffected."""
    if not skip:
        yield
        return
    from torch.overrides import TorchFunctionMode

    init = torch.nn.init
    skipped = {init.uniform_, init.normal_, init.trunc_normal_, init.kaiming_uniform_, init.kaiming_normal_,
               init.xavier_uniform_, init.xavier_normal_, init.orthogonal_, init.sparse_,
               torch.Tensor.uniform_, torch.Tensor.normal_}

    class SkipRandomFills(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in skipped:
                return args[0] if args else kwargs["tensor"]
            return func(*args, **(kwargs or {}))

    with SkipRandomFills():
        yield


class LoadedModel:
    """An open_clip model in eval mode with its own preprocessing, loaded once per worker."""

    def __init__(self, spec: ModelSpec, device: str = "cpu", threads: int = 0, precision: str = "auto"):
        import open_clip
        import torch

        _register_vidx_configs()
        if threads > 0:
            torch.set_num_threads(threads)
        self.spec = spec
        self.device = device
        # open_clip logs "No pretrained weights loaded" on the root logger for random models;
        # our own warning (warn_if_random) is the one users should see.
        logging.disable(logging.WARNING)
        local_dir = os.path.isdir(spec.weights)  # a hub-style folder: config + checkpoint
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if spec.is_random:
                    torch.manual_seed(_RANDOM_SEED)  # the same "random" model in every worker and run
                    model, _, preprocess = open_clip.create_model_and_transforms(spec.name, pretrained=None)
                else:
                    # Every weight is loaded from the checkpoint (strict, and required: open_clip
                    # raises otherwise), so the random values open_clip draws while it builds the
                    # model are never used: skip drawing them (ViT-B-32: 0.75 CPU-s of ~1.1).
                    try:
                        with _random_init_skipped(torch, skip=local_dir or _strict_checkpoint(spec.weights)):
                            model, _, preprocess = open_clip.create_model_and_transforms(
                                f"local-dir:{spec.weights}" if local_dir else spec.name,
                                pretrained=None if local_dir else spec.weights, require_pretrained=True)
                    except Exception as exc:  # pickle, safetensors, torch: every unreadable file
                        hint = ("Check that the folder's open_clip_config.json describes its checkpoint." if local_dir
                                else "Check that --model matches the checkpoint's architecture.")
                        raise ModelUnavailable(
                            f"cannot load {spec.weights} as {spec.name} weights: {str(exc).splitlines()[0]}\n"
                            + hint) from None
                tokenizer_name = f"local-dir:{spec.weights}" if local_dir else spec.name
                self.tokenizer = open_clip.get_tokenizer(tokenizer_name)
        finally:
            logging.disable(logging.NOTSET)
        self.model = model.to(device).eval()
        self.precision = image_precision(precision, device)
        self.image_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        # The image tower is cast on first use: text-only users (search, moderation, scene
        # tags) never pay for it. The text tower stays float32.
        self._visual_cast = threading.Lock() if self.precision == "bf16" else None
        # encode_text runs only up to the longest prompt (see trim_tokens)
        self.trim_text = has_causal_clip_text(self.model)
        self.preprocess = preprocess
        self._batch_transform = _batch_transform_of(preprocess)
        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
            else int(self.encode_text(["a"]).shape[1])
        self.logit_scale = float(model.logit_scale.exp().item())

    def preprocess_frames(self, frames: np.ndarray):
        """uint8 RGB frames (N, H, W, 3) -> the model's input tensor, as open_clip's transform makes it.

        The decoder already scales frames so their shorter side is the model's input size, which
        makes the transform's resize a no-op; when the transform is open_clip's usual one (resize
        shorter side, centre crop, to tensor, normalise), its crop and normalisation are applied
        to the whole batch at once with the transform's own size, mean and std (equal output,
        ~10x less time than one PIL image at a time). Any other transform runs as it is.
        """
        import torch
        from PIL import Image

        fast = self._batch_transform
        if fast is not None and frames.ndim == 4 and len(frames) and min(frames.shape[1:3]) == fast[0]:
            size, mean, std = fast
            h, w = frames.shape[1:3]
            top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
            crop = np.ascontiguousarray(frames[:, top:top + size, left:left + size])
            x = torch.from_numpy(crop).permute(0, 3, 1, 2).float().div_(255.0)
            return x.sub_(mean).div_(std)
        return torch.stack([self.preprocess(Image.fromarray(f)) for f in frames])

    def encode_frames(self, frames: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """L2-normalised image embeddings (N, dim) float32."""
        return self.encode_frame_groups([frames], batch_size)[0]

    def encode_frame_groups(self, groups: list[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
        """``encode_frames`` of each group, run in shared batches of ``batch_size``.

        Groups may differ in frame size (each video is decoded at its own aspect ratio): each
        is preprocessed on its own, then their tensors are batched together. Many small groups
        (short videos: a 2 s file gives 2 frames) cost what one large group costs, not what
        tiny batches do (ViT-B-32 in bfloat16 on 2 cores: 16.1 ms/frame in batches of 2,
        13.5 in batches of 32; bench/model_batch_sizes.py)."""
        import torch

        if self._visual_cast is not None:
            with self._visual_cast:
                if self._visual_cast is not None:  # another thread may have cast it meanwhile
                    self.model.visual.to(self.image_dtype)
                    self._visual_cast = None
        if not groups:
            return []
        sizes = [len(g) for g in groups]
        out = []
        with torch.inference_mode():
            # Preprocessed a batch at a time: a float tensor is 4x the uint8 frames.
            batch: list = []
            n_batch = 0
            for group in groups:
                i = 0
                while i < len(group):
                    take = min(batch_size - n_batch, len(group) - i)
                    batch.append(self.preprocess_frames(group[i:i + take]))
                    n_batch += take
                    i += take
                    if n_batch == batch_size:
                        out.append(self._encode_batch(batch))
                        batch, n_batch = [], 0
            if batch:
                out.append(self._encode_batch(batch))
        flat = np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
        return np.split(flat, np.cumsum(sizes)[:-1])

    def _encode_batch(self, tensors: list):
        import torch

        x = (tensors[0] if len(tensors) == 1 else torch.cat(tensors)).to(self.device, self.image_dtype)
        feats = self.model.encode_image(x).float()
        return torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()

    def encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            if self.trim_text:
                feats = encode_tokens_causal(self.model, trim_tokens(tokens))
            else:
                feats = self.model.encode_text(tokens)
            return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


# -- text: stop at the longest prompt ------------------------------------------------------
#
# open_clip's CLIP text tower runs every prompt through the whole context (77 tokens), but
# its attention is causal and the embedding is read at the end-of-text token, so positions
# after the longest prompt's end-of-text token cannot change any output. Prompts are ~10
# tokens: running only those is far less work for the same vectors (bench/text_encoding.py on
# ViT-B-32, 2 cores: cosine to the full pass >= 0.9999999; the 2,456 tag-vocabulary prompts
# 99 s -> 11.8 s, a 4-prompt query 137 -> 35 ms). Any other text tower runs unchanged.

def has_causal_clip_text(model) -> bool:
    """True when ``model`` is open_clip's ``CLIP`` with a causal text mask and EOT pooling."""
    try:
        import torch
        from open_clip.model import CLIP
    except ImportError:
        return False
    if type(model).encode_text is not CLIP.encode_text or getattr(model, "text_pool_type", None) != "argmax":
        return False
    mask = getattr(model, "attn_mask", None)
    pos = getattr(model, "positional_embedding", None)
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or pos is None or mask.shape[0] != pos.shape[0]:
        return False
    n = mask.shape[0]
    above = torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(1)
    # causal: nothing at or below the diagonal is masked, everything above it is
    return bool(torch.all(mask[~above] == 0)) and bool(torch.all(torch.isneginf(mask[above])))


def trim_tokens(tokens):
    """``tokens`` cut after the last end-of-text position in the batch (the argmax of each row)."""
    return tokens[:, :int(tokens.argmax(dim=-1).max()) + 1]


def encode_tokens_causal(model, tokens):
    """``CLIP.encode_text`` on a shortened context: the same steps with position embeddings and
    mask cut to ``tokens``' length (valid only when ``has_causal_clip_text(model)``)."""
    import torch

    n = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
            else x @ model.text_projection
    return x


def _batch_transform_of(preprocess) -> tuple | None:
    """(size, mean, std) when ``preprocess`` is open_clip's standard eval transform, else None.

    Standard: Resize(shorter side = size, bicubic) -> CenterCrop(size) -> RGB conversion ->
    ToTensor -> Normalize(mean, std).
    """
    import torch
    from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize

    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) != 5:
        return None
    resize, crop, convert, to_tensor, norm = steps
    if type(resize) is not Resize or type(crop) is not CenterCrop or type(norm) is not Normalize:
        return None
    size = resize.size[0] if isinstance(resize.size, (list, tuple)) and len(resize.size) == 1 else resize.size
    if not isinstance(size, int) or resize.max_size is not None or \
            resize.interpolation != InterpolationMode.BICUBIC or tuple(crop.size) != (size, size):
        return None
    if type(convert).__name__ not in ("MaybeConvertMode", "_convert_to_rgb", "function") or \
            type(to_tensor).__name__ not in ("MaybeToTensor", "ToTensor"):
        return None
    mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1)
    return size, mean, std


def consensus(vectors: np.ndarray) -> np.ndarray:
    """TSN consensus of L2-normalised snippet vectors: their mean, re-normalised."""
    mean = vectors.astype(np.float32).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


# -- fast text encoder for cold searches ---------------------------------------------------
#
# A search process needs only the text tower, but importing open_clip (and torchvision) and
# building the whole model costs seconds on every cold `vidx search`. After the first full
# load, the text tower is traced to TorchScript and cached per user and model; later
# processes load it with torch alone and tokenize with open_clip's BPE tokenizer module,
# loaded on its own (it has no package-relative imports), so open_clip is never imported.

_TEXT_CACHE_FORMAT = 2  # 2: traced on a trimmed context (see trim_tokens)


def _text_cache_path(model_id: str) -> str:
    key = hashlib.blake2b(model_id.encode(), digest_size=10).hexdigest()
    return user_cache_dir("text", f"{key}.pt")


class FastTextEncoder:
    """A traced text tower plus the BPE tokenizer: ``encode_text`` like LoadedModel's."""

    def __init__(self, module, tokenizer, context_length: int, model_id: str, trim: bool):
        self.module, self.tokenizer, self.model_id = module, tokenizer, model_id
        self.context_length, self.trim = context_length, trim

    def encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(texts, context_length=self.context_length)
            return self.module(trim_tokens(tokens) if self.trim else tokens).numpy()


def _standalone_tokenizer():
    import importlib.util
    import sys

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "tokenizer.py")
    name = "_vidx_open_clip_tokenizer"
    if name not in sys.modules:
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].SimpleTokenizer()


def load_fast_text_encoder(model_id: str, threads: int = 0) -> FastTextEncoder | None:
    """The cached traced text tower of ``model_id``, or None (then load the full model)."""
    import json

    path = _text_cache_path(model_id)
    try:
        with open(path + ".json") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    if meta.get("model_id") != model_id or meta.get("tokenizer") != "simple" or \
            meta.get("format") != _TEXT_CACHE_FORMAT:
        return None  # another model, or a file from an older vidx: re-exported after a full load
    try:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but works
            warnings.simplefilter("ignore")
            module = torch.jit.load(path, map_location="cpu")
        tokenizer = _standalone_tokenizer()
    except Exception as exc:  # a damaged cache entry or another torch: fall back to open_clip
        log.info("fast text encoder unavailable (%s); loading the full model", exc)
        return None
    if tokenizer is None:
        return None
    return FastTextEncoder(module.eval(), tokenizer, int(meta["context_length"]), model_id, bool(meta["trim"]))


def export_fast_text_encoder(model: "LoadedModel") -> str | None:
    """Trace ``model``'s text tower into the per-user cache (CLIP BPE tokenizers only)."""
    import json

    import torch
    from open_clip.tokenizer import SimpleTokenizer

    if not isinstance(model.tokenizer, SimpleTokenizer) or model.device != "cpu":
        return None
    path = _text_cache_path(model.spec.model_id)
    clip = model.model
    trim = model.trim_text

    class _Text(torch.nn.Module):
        def __init__(self, clip_model):
            super().__init__()
            self.clip = clip_model

        def forward(self, tokens):
            # the traced graph takes the context length from ``tokens`` (aten::size), so one
            # trace serves every trimmed batch
            feats = encode_tokens_causal(self.clip, tokens) if trim else self.clip.encode_text(tokens)
            return torch.nn.functional.normalize(feats.float(), dim=-1)

    visual = getattr(clip, "visual", None)
    try:
        clip.visual = torch.nn.Identity()  # keep the image tower out of the traced file
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = model.tokenizer(["a photo of a cat"])
            traced = torch.jit.trace(_Text(clip).eval(), trim_tokens(example) if trim else example,
                                     check_trace=False)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        traced.save(tmp)
        os.replace(tmp, path)
        with open(tmp + ".json", "w") as fh:
            json.dump({"model_id": model.spec.model_id, "tokenizer": "simple", "format": _TEXT_CACHE_FORMAT,
                       "trim": trim, "context_length": int(getattr(model.tokenizer, "context_length", 77))}, fh)
        os.replace(tmp + ".json", path + ".json")
        return path
    except Exception as exc:  # tracing is an optimisation: never fail a search over it
        log.info("could not cache a fast text encoder: %s", exc)
        return None
    finally:
        if visual is not None:
            clip.visual = visual
