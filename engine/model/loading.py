"""Loading an open_clip model for decomposition, and refusing what cannot be decomposed exactly."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.core.types import ModelDims
from engine.errors import UnsupportedModel, UserError, WeightsMissing
from engine.model.specs import ModelSpec, _open_clip, local_weights, parse_spec
from engine.model.timm_tower import check_timm_supported, is_timm_tower, pool_info, timm_dims
from engine.model.tokenizers import load_tokenizer


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: object  # PIL.Image -> Tensor[3, H, W]
    tokenizer: object
    spec: str
    arch: str
    weights_hash: str
    dims: ModelDims
    device: torch.device
    quick_gelu: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def visual(self):
        return self.model.visual


def _file_hash(path: str) -> str:
    st = os.stat(path)
    return _file_hash_cached(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_hash_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _folder_hash(folder: Path) -> str:
    """One hash over a model folder's config and checkpoint files (names and contents)."""
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.suffix in CHECKPOINT_SUFFIXES or p.name == "open_clip_config.json")
    )
    if not any(p.suffix in CHECKPOINT_SUFFIXES for p in files):
        raise WeightsMissing(f"no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}) in {folder}")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{_file_hash(str(p))}\0".encode())
    return "sha256:" + h.hexdigest()


def weights_hash_of(spec: str) -> str:
    """The hash of the weights `spec` loads: its checkpoint file, or for a folder (`local-dir:`)
    its config and checkpoint files together; "unknown" only when nothing local is known."""
    where = local_weights(spec)
    if where and os.path.isfile(where):
        return _file_hash(where)
    if where and os.path.isdir(where):
        return _folder_hash(Path(where))
    return "unknown"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can a download even start? (offline mode set, or no route to the hub: no)."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _weights_missing(s: ModelSpec) -> WeightsMissing:
    from engine.model.origin import weights_missing_message

    return WeightsMissing(weights_missing_message(s))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


class _DropOpenClipRecords(logging.Filter):
    """Drops the info/warning records open_clip logs (it logs on the root logger)."""

    def __init__(self) -> None:
        super().__init__()
        import open_clip

        self.prefix = os.path.dirname(open_clip.__file__) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(self.prefix)


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's own log records and warnings for one call. No logger's level is
    changed; the filter is removed and the warning filters restored on exit."""
    root = logging.getLogger()
    flt = _DropOpenClipRecords()
    root.addFilter(flt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(flt)


def _checkpoint_file(s: ModelSpec, spec: str) -> Path | None:
    """The local checkpoint file `spec` loads (for error messages), or None."""
    where = local_weights(spec) if s.kind != "file" else s.path
    if not where or not os.path.exists(where):
        return None
    if os.path.isdir(where):
        files = sorted(p for p in Path(where).iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
        return files[0] if len(files) == 1 else None
    return Path(where)


_UNREADABLE = ("deserializ", "PytorchStreamReader", "zip archive", "load key", "unpickl", "EOF")


def _load_error(s: ModelSpec, spec: str, e: Exception) -> UserError:
    """Say what went wrong: weights not here, an unreadable checkpoint, weights that do not fit
    the architecture, or anything else (its first line)."""
    ckpt = _checkpoint_file(s, spec)
    if ckpt is None and s.kind in ("tag", "hf-hub"):
        return _weights_missing(s)
    text = f"{type(e).__name__}: {e}"
    if ckpt is not None and any(k.lower() in text.lower() for k in _UNREADABLE):
        return UserError(
            f"cannot read the checkpoint {ckpt} (corrupt or truncated?): {_first_line(e)}"
        )
    if "state_dict" in text:
        return UserError(f"the checkpoint of {spec} does not fit {s.arch}: {_first_line(e)}")
    return UserError(f"could not load {spec}: {_first_line(e)}")


def load_model(
    spec: str, *, device: str = "cpu", random_weights: bool = False, seed: int = 0
) -> LoadedModel:
    """Load an open_clip model for decomposition; refuse architectures we cannot decompose exactly.

    `random_weights=True` builds the architecture at a seeded random init (no checkpoint needed).
    OpenAI-trained tags are built with QuickGELU, as they were trained.
    """
    oc = _open_clip()
    s = parse_spec(spec)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available on this machine")
    quick_gelu = False
    kwargs: dict = {}
    name = s.arch
    pretrained = None
    weights_hash = f"random:seed{seed}"
    if s.kind == "tag":
        quick_gelu = bool(oc.get_pretrained_cfg(s.arch, s.tag).get("quick_gelu", False))
        if not random_weights:
            pretrained = s.tag
            if local_weights(spec) is None and not _hub_reachable():
                raise _weights_missing(s)
    elif s.kind == "file":
        pretrained = None if random_weights else s.path
        quick_gelu = s.arch.endswith("-quickgelu")
    elif s.kind == "demo":
        if not (Path(s.path) / "open_clip_config.json").is_file():
            raise WeightsMissing(f"the demo model is missing from {s.path} (broken checkout?)")
        name = f"local-dir:{s.path}"
    elif s.kind == "hf-hub" and not random_weights:
        if local_weights(spec) is None and not _hub_reachable():
            raise _weights_missing(s)  # at once, not after the hub client's retries
    elif s.kind == "tiny":
        random_weights = True
    elif s.kind == "arch" and not random_weights:
        raise UserError(
            f"{spec!r} names an architecture without weights; add /TAG, :/path, or "
            "use --random-weights"
        )
    if quick_gelu:
        kwargs["force_quick_gelu"] = True
    if random_weights and s.kind in ("local-dir", "hf-hub", "demo"):
        kwargs["load_weights"] = False
    try:
        with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the random init; global RNG restored
            model, _, preprocess = oc.create_model_and_transforms(
                name, pretrained=pretrained, device=device, **kwargs
            )
    except UserError:
        raise
    except (torch.OutOfMemoryError, MemoryError) as e:
        raise UserError(f"out of memory loading {spec} on {device}: {_first_line(e)}") from e
    except Exception as e:
        raise _load_error(s, spec, e) from e
    model.eval()
    check_supported(model, spec)
    tokenizer, tokenizer_name = load_tokenizer(
        oc, name, model, random_weights=random_weights, spec=spec
    )
    extra = {"tokenizer": tokenizer_name}
    if is_timm_tower(model):
        extra.update(pool_info(model))
    if not random_weights:
        weights_hash = weights_hash_of(spec)
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        spec=spec,
        arch=s.arch,
        weights_hash=weights_hash,
        dims=_dims(model),
        device=torch.device(device),
        quick_gelu=quick_gelu,
        extra=extra,
    )


# What the exact decomposition reads of each block, by state-dict name; a block with any other
# parameter, buffer or (non-Identity, non-Dropout) submodule is refused, whatever the feature is.
BLOCK_PARAMS = frozenset(
    {
        "ln_1.weight",
        "ln_1.bias",
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
        "ln_2.weight",
        "ln_2.bias",
        "mlp.c_fc.weight",
        "mlp.c_fc.bias",
        "mlp.c_proj.weight",
        "mlp.c_proj.bias",
    }
)
BLOCK_REQUIRED = frozenset({"ln_1.weight", "attn.in_proj_weight", "attn.out_proj.weight"})
BLOCK_MODULES = frozenset(
    {"ln_1", "attn", "attn.out_proj", "ln_2", "mlp", "mlp.c_fc", "mlp.c_proj"}
)
BLOCK_ACTIVATION = "mlp.gelu"  # any elementwise activation (the MLP term is captured whole)
VISUAL_PARAMS = frozenset(
    {
        "conv1.weight",
        "class_embedding",
        "positional_embedding",
        "ln_pre.weight",
        "ln_pre.bias",
        "ln_post.weight",
        "ln_post.bias",
        "proj",
    }
)
_KNOWN_REASONS = (  # friendlier names for the unexpected parameters we know
    ("ls_", "LayerScale"),
    ("ln_attn", "a post-attention norm"),
    ("attn.ln_q", "qk-norm"),
    ("attn.ln_k", "qk-norm"),
    ("attn.logit_scale", "scaled cosine attention"),
    ("attn.head_scale", "per-head scaling"),
    ("attn.ln_inner", "an inner attention norm"),
    ("mlp.ln", "an MLP norm"),
    ("attn_pool", "attention pooling"),
)


def _unexpected(names: set[str], block: int | None, spec: str) -> UnsupportedModel:
    listed = sorted(n for n in names if not any(n.startswith(o + ".") for o in names))
    reasons = sorted({why for n in listed for pre, why in _KNOWN_REASONS if n.startswith(pre)})
    where = f"block {block}" if block is not None else "the vision tower"
    shown = ", ".join(listed[:6]) + (f" (+{len(listed) - 6} more)" if len(listed) > 6 else "")
    return UnsupportedModel(
        f"{spec}: {where} has parameters or modules the exact decomposition does not know: "
        f"{shown}" + (f" ({', '.join(reasons)})" if reasons else "")
    )


def check_supported(model: torch.nn.Module, spec: str = "") -> None:
    """Refuse what the decomposition cannot handle exactly, naming the reason.

    Accepts only a class-token ViT whose every block has exactly the parameters, buffers and
    submodules of open_clip's plain pre-norm block (`BLOCK_PARAMS`, `BLOCK_MODULES`): any other
    option (LayerScale, qk-norm, scaled cosine attention, head scaling, inner norms, ...) adds a
    parameter or a module and is refused by name, known or not.
    """
    from open_clip.transformer import VisionTransformer

    if is_timm_tower(model):  # SigLIP / SigLIP 2: timm ViT with attention pooling
        return check_timm_supported(model, spec)
    v = getattr(model, "visual", None)
    if not isinstance(v, VisionTransformer):
        raise UnsupportedModel(
            f"{spec}: not an open_clip VisionTransformer (non-ViT towers unsupported)"
        )
    if getattr(v, "attn_pool", None) is not None:
        raise UnsupportedModel(
            f"{spec}: open_clip's attentional_pool (CoCa-style) is not decomposed: its "
            "n_queries queries pass through ln_q / ln_k and the pooled tokens through ln_post, "
            "which the same frozen-softmax math would handle but is not implemented; timm "
            "towers with attention pooling (SigLIP) are"
        )
    if getattr(v, "pool_type", "tok") != "tok":
        raise UnsupportedModel(f"{spec}: pool_type {v.pool_type!r} unsupported (class token only)")
    if v.proj is None:
        raise UnsupportedModel(f"{spec}: the vision tower has no output projection `proj`")
    top = {n for n, _ in v.named_parameters() if not n.startswith("transformer.resblocks.")}
    if top - VISUAL_PARAMS:
        raise _unexpected(top - VISUAL_PARAMS, None, spec)
    for i, blk in enumerate(v.transformer.resblocks):
        params = {n for n, _ in blk.named_parameters()}
        modules = {
            n
            for n, m in blk.named_modules()
            if n and not isinstance(m, torch.nn.Identity | torch.nn.Dropout)
        }
        extra = (params - BLOCK_PARAMS) | (modules - BLOCK_MODULES - {BLOCK_ACTIVATION})
        extra |= {n for n, _ in blk.named_buffers()}
        if extra:
            raise _unexpected(extra, i, spec)
        if BLOCK_REQUIRED - params:
            raise UnsupportedModel(
                f"{spec}: block {i} lacks {', '.join(sorted(BLOCK_REQUIRED - params))}"
            )
        if not isinstance(blk.ln_1, torch.nn.LayerNorm):
            raise UnsupportedModel(f"{spec}: block {i} ln_1 is not a LayerNorm")
    if not isinstance(v.ln_post, torch.nn.LayerNorm):
        raise UnsupportedModel(f"{spec}: ln_post is not a LayerNorm")


def _dims(model) -> ModelDims:
    if is_timm_tower(model):
        return timm_dims(model)
    v = model.visual
    blk = v.transformer.resblocks[0]
    d_model = v.transformer.width
    n_heads = blk.attn.num_heads
    image_size = v.image_size[0] if isinstance(v.image_size, tuple) else v.image_size
    patch = v.patch_size[0] if isinstance(v.patch_size, tuple) else v.patch_size
    grid = v.grid_size[0] if isinstance(v.grid_size, tuple) else v.grid_size
    return ModelDims(
        n_layers=len(v.transformer.resblocks),
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_model // n_heads,
        d_embed=v.proj.shape[1],
        image_size=int(image_size),
        patch_size=int(patch),
        grid=int(grid),
    )
