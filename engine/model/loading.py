"""Loading an open_clip model for decomposition, and refusing what cannot be decomposed exactly."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field

import torch

from engine.core.types import ModelDims
from engine.errors import UnsupportedModel, UserError, WeightsMissing
from engine.model.specs import DEMO_DIR, ModelSpec, _open_clip, local_weights, parse_spec


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
    return WeightsMissing(
        f"weights for {s.raw} are not on this machine and could not be downloaded; put the "
        f"checkpoint file anywhere and use --model {s.arch}:/path/to/open_clip_model.safetensors "
        "(or fill the Hugging Face cache, ~/.cache/huggingface/hub, on a machine with network)"
    )


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
        if not (DEMO_DIR / "open_clip_config.json").is_file():
            raise WeightsMissing(f"the demo model is missing from {DEMO_DIR} (broken checkout?)")
        name = f"local-dir:{DEMO_DIR}"
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
    torch.manual_seed(seed)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.CRITICAL)  # open_clip logs on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _, preprocess = oc.create_model_and_transforms(
                name, pretrained=pretrained, device=device, **kwargs
            )
    except (RuntimeError, FileNotFoundError, OSError) as e:
        if s.kind in ("tag", "hf-hub"):
            raise _weights_missing(s) from e
        raise UserError(f"could not load {spec}: {str(e).splitlines()[0][:300]}") from e
    finally:
        logging.getLogger().setLevel(root_level)
    model.eval()
    check_supported(model, spec)
    tokenizer = oc.get_tokenizer(name)
    if not random_weights:
        where = local_weights(spec)
        if where and os.path.isfile(where):
            weights_hash = _file_hash(where)
        else:
            weights_hash = "unknown"
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
    )


def check_supported(model: torch.nn.Module, spec: str = "") -> None:
    """Refuse what the decomposition cannot handle exactly, naming the reason."""
    from open_clip.transformer import VisionTransformer

    v = getattr(model, "visual", None)
    if not isinstance(v, VisionTransformer):
        raise UnsupportedModel(
            f"{spec}: not an open_clip VisionTransformer (non-ViT towers unsupported)"
        )
    if getattr(v, "attn_pool", None) is not None:
        raise UnsupportedModel(
            f"{spec}: attention pooling is not supported (class-token pooling only)"
        )
    if getattr(v, "pool_type", "tok") != "tok":
        raise UnsupportedModel(f"{spec}: pool_type {v.pool_type!r} unsupported (class token only)")
    if v.proj is None:
        raise UnsupportedModel(f"{spec}: the vision tower has no output projection `proj`")
    for i, blk in enumerate(v.transformer.resblocks):
        for ls in ("ls_1", "ls_2"):
            if not isinstance(getattr(blk, ls, torch.nn.Identity()), torch.nn.Identity):
                raise UnsupportedModel(f"{spec}: LayerScale ({ls} in block {i}) is not supported")
        if not isinstance(getattr(blk, "ln_attn", torch.nn.Identity()), torch.nn.Identity):
            raise UnsupportedModel(f"{spec}: post-attention norm in block {i} is not supported")
        if getattr(blk.attn, "in_proj_weight", None) is None:
            raise UnsupportedModel(f"{spec}: block {i} has no fused `in_proj_weight`")
        if not isinstance(blk.ln_1, torch.nn.LayerNorm):
            raise UnsupportedModel(f"{spec}: block {i} ln_1 is not a LayerNorm")
    if not isinstance(v.ln_post, torch.nn.LayerNorm):
        raise UnsupportedModel(f"{spec}: ln_post is not a LayerNorm")


def _dims(model) -> ModelDims:
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
