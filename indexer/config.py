"""Settings: the one table of defaults and how it is overridden.

Precedence is CLI > environment (``VIDX_<NAME>``) > config file (TOML, from
``--config``, ``VIDX_CONFIG`` or ``$XDG_CONFIG_HOME/vidx/config.toml``) > the
defaults in ``DEFAULTS``. Every tunable of vidx lives in this one table so the
README, ``vidx config`` and the code cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping


def default_index_dir() -> str:
    """The XDG data dir: ``$XDG_DATA_HOME/vidx/index`` (``~/.local/share/vidx/index``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return os.path.join(base, "vidx", "index")


def user_cache_dir(*parts: str) -> str:
    """vidx's per-user cache: ``$XDG_CACHE_HOME/vidx/...`` (``~/.cache/vidx/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return os.path.join(base, "vidx", *parts)


def default_config_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return os.path.join(base, "vidx", "config.toml")


@dataclass(frozen=True)
class Settings:
    """Every setting of vidx with its default. Field docs are shown by ``vidx config``."""

    db: str = ""  # index directory; "" means default_index_dir()
    model: str = "ViT-B-32"
    # open_clip pretrained tag, a checkpoint file, a directory, or "random" (benchmarks only)
    pretrained: str = "laion2b_s34b_b79k"
    clip_s: float = 5.0  # target clip length; see README "Clips"
    min_shot_s: float = 0.6  # shortest shot: cuts closer than this to the previous one are ignored
    shots: bool = True  # detect shots while decoding and align clips to them (exact sampling)
    shot_threshold: float = 3.0  # PySceneDetect AdaptiveDetector adaptive_threshold (lower: more cuts)
    # frames the shot detector sees: "reference" skips frames nothing refers to (most
    # B-frames; 20-60% less decoding), "all" decodes every frame (cuts on B-frames exact)
    shot_frames: str = "reference"
    tags: bool = True  # zero-shot tags (actions, objects, scenes) for clips, shots and videos
    labels: str = ""  # extra vocabulary files for tags, separated by the path separator (:)
    snippets: int = 3  # TSN segments per clip (K)
    sampling: str = "exact"  # "exact" centre frame, or "keyframe" (nearest keyframe, cheaper)
    batch_size: int = 32  # frames per model forward pass
    decode_timeout_s: float = 120.0  # a decode with no progress for this long is hung (DecodeWatch)
    embed_workers: int = 1  # model actors; each loads the model once
    decode_workers: int = 0  # concurrent decode tasks; 0 = one per CPU not used by the model
    torch_threads: int = 0  # per model actor; 0 = the CPUs Ray gives it
    include_hidden: bool = False
    commit_every_s: float = 2.0  # DuckDB transaction cadence while indexing
    # while a video is being indexed, its finished clips are saved this often, so that a kill
    # does not lose them: the next run embeds only the rest of the file (0: off)
    checkpoint_s: float = 60.0
    faiss_flush_s: float = 60.0  # FAISS file rewrite cadence (DuckDB is the truth)
    ann_threshold: int = 100_000  # clips: above this the vector index is approximate (IVF-SQ8)
    ann_hysteresis: float = 0.2  # back to exact below (1 - this) * threshold
    ann_target_recall: float = 0.95  # recall@10 vs exact that the IVF parameters are tuned for
    ann_retrain_growth: float = 2.0  # retrain the IVF index when the archive grew this much
    ann_nlist: int = 0  # IVF lists; 0 chooses by size
    ann_tune_queries: int = 600  # held-out queries used to tune nprobe at build time
    ray_address: str = ""  # "" starts Ray embedded; "auto" or host:port joins a cluster
    executor: str = "ray"  # "ray", or "local": decode and embed in this process without Ray (one machine)
    device: str = "auto"  # "auto" uses a GPU in the model actor when Ray sees one
    # image tower precision: "auto" = bf16 on CPUs with native bfloat16 (AVX512-BF16/AMX), else fp32
    precision: str = "auto"

    @property
    def clip_recipe(self) -> str:
        """How clips are cut and sampled; stored per video so a change re-indexes it."""
        if self.shots and self.sampling == "exact":
            frames = ",ref" if self.shot_frames == "reference" else ""
            return f"exact+shots(t={self.shot_threshold:g},min={self.min_shot_s:g}{frames})"
        return self.sampling

    @property
    def index_dir(self) -> str:
        return os.path.abspath(os.path.expanduser(self.db or default_index_dir()))


DEFAULTS = Settings()
PRECISIONS = ("auto", "fp32", "bf16")  # the image tower's (indexer.model.image_precision)
_FIELD_TYPES = {f.name: f.type for f in fields(Settings)}


class ConfigError(ValueError):
    """A setting has a bad value; the message names where it came from."""


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = type(getattr(DEFAULTS, name))
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if isinstance(value, bool) and kind in (int, float):
            raise ValueError(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)  # 2.5 snippets is a mistake, not 2
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: setting '{name}' must be {kind.__name__}, got {value!r}") from None


def _validate(settings: Settings) -> Settings:
    if not (math.isfinite(settings.clip_s) and math.isfinite(settings.min_shot_s)) or \
            settings.clip_s <= 0 or settings.min_shot_s < 0:
        raise ConfigError("clip_s must be > 0 and min_shot_s >= 0 (finite numbers)")
    if settings.snippets < 1:
        raise ConfigError("snippets must be >= 1")
    if settings.sampling not in ("exact", "keyframe"):
        raise ConfigError(f"sampling must be 'exact' or 'keyframe', got {settings.sampling!r}")
    if settings.shot_frames not in ("reference", "all"):
        raise ConfigError(f"shot_frames must be 'reference' or 'all', got {settings.shot_frames!r}")
    if settings.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {settings.precision!r}")
    if settings.executor not in ("ray", "local"):
        raise ConfigError(f"executor must be 'ray' or 'local', got {settings.executor!r}")
    if settings.executor == "local" and settings.ray_address:
        raise ConfigError("executor 'local' runs on this machine only; drop ray_address (--ray-address)")
    if settings.batch_size < 1 or settings.embed_workers < 1:
        raise ConfigError("batch_size and embed_workers must be >= 1")
    if not (math.isfinite(settings.checkpoint_s) and settings.checkpoint_s >= 0):
        raise ConfigError(f"checkpoint_s must be a number of seconds >= 0 (0: off), got {settings.checkpoint_s!r}")
    if not (math.isfinite(settings.decode_timeout_s) and settings.decode_timeout_s > 0):
        # There is no "off": a decode stuck inside libav must be stopped, or the run never ends.
        raise ConfigError(f"decode_timeout_s must be a number of seconds > 0, got {settings.decode_timeout_s!r} "
                          f"(a decode is stopped only when it makes no progress that long; slow files are not)")
    return settings


def load_settings(cli: Mapping[str, Any] | None = None, config_path: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings with precedence CLI > env > config file > defaults.

    ``cli`` holds only options the user actually gave (None values are ignored).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}

    path = config_path or environ.get("VIDX_CONFIG") or default_config_path()
    explicit = bool(config_path or environ.get("VIDX_CONFIG"))
    if os.path.exists(path):
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        data = data.get("vidx", data)  # allow a [vidx] table or top-level keys
        for key, value in data.items():
            key = key.replace("-", "_")
            if key not in _FIELD_TYPES:
                raise ConfigError(f"config file {path}: unknown setting '{key}' "
                                  f"(known: {', '.join(sorted(_FIELD_TYPES))})")
            values[key] = _coerce(key, value, f"config file {path}")
    elif explicit:
        raise ConfigError(f"config file {path} does not exist")

    for name in _FIELD_TYPES:
        env_key = f"VIDX_{name.upper()}"
        if env_key in environ:
            values[name] = _coerce(name, environ[env_key], f"environment {env_key}")

    for name, value in (cli or {}).items():
        if value is None:
            continue
        if name not in _FIELD_TYPES:
            raise ConfigError(f"unknown setting '{name}'")
        values[name] = _coerce(name, value, f"option --{name.replace('_', '-')}")

    return _validate(dataclasses.replace(DEFAULTS, **values))
