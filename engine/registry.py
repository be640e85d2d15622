"""Model registry — the ONE module that touches open_clip internals.

Specs (`parse_spec`):
  `demo`                              the bundled demo model (engine/data/demo_model, local-dir)
  `tiny-test`                         a 2-layer random ViT for fast tests (always random weights)
  `ARCH/TAG`  e.g. `ViT-B-32/openai`  open_clip pretrained tag (cached locally, else downloaded)
  `ARCH:/path/to/weights.safetensors` an open_clip architecture with a local checkpoint file
  `local-dir:/path`                   an open_clip folder (open_clip_config.json + weights)
  `hf-hub:org/repo`                   an open_clip model on the Hugging Face hub (or its local cache)
  `ARCH`                              architecture only: needs `random_weights=True`

Weights are read by their state-dict names (`in_proj_weight`, `out_proj`, `ln_1`, `ln_post`, `proj`);
inputs are captured with forward hooks on stable module paths (`visual.ln_pre`,
`visual.transformer.resblocks.{l}.ln_1|attn|mlp`, `visual.ln_post`). Nothing of open_clip is
copied or patched, and nothing here depends on the attention module's internals.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from engine.errors import UnsupportedModel, UserError, WeightsMissing

DATA_DIR = Path(__file__).parent / "data"
DEMO_DIR = DATA_DIR / "demo_model"
CONFIG_DIR = DATA_DIR / "model_configs"
TINY_ARCH = "ClipInterpretTiny"


@dataclass(frozen=True)
class ModelEntry:
    """A named model of the registry: `spec` is what `load_model` takes."""

    name: str
    spec: str
    description: str
    paper: bool = False


# The paper's six models, then the bundled ones. OpenAI tags need QuickGELU (handled in load_model).
MODELS: tuple[ModelEntry, ...] = (
    ModelEntry("ViT-B-32 OpenAI", "ViT-B-32/openai", "paper model; OpenAI-400M", True),
    ModelEntry(
        "ViT-B-32 DataComp",
        "ViT-B-32/datacomp_m_s128m_b4k",
        "paper model; the demo's DataComp-M",
        True,
    ),
    ModelEntry("ViT-B-16 OpenAI", "ViT-B-16/openai", "paper model; OpenAI-400M", True),
    ModelEntry("ViT-B-16 LAION-2B", "ViT-B-16/laion2b_s34b_b88k", "paper model; LAION-2B", True),
    ModelEntry("ViT-L-14 OpenAI", "ViT-L-14/openai", "paper model; OpenAI-400M", True),
    ModelEntry("ViT-L-14 LAION-2B", "ViT-L-14/laion2b_s32b_b82k", "paper model; LAION-2B", True),
    ModelEntry("demo", "demo", "bundled small CLIP trained on the procedural demo world"),
    ModelEntry("tiny-test", "tiny-test", "2-layer random ViT for tests (random weights only)"),
)


def list_models() -> list[dict]:
    """Known models with local availability: [{name, spec, description, paper, available, where}]."""
    rows = []
    for m in MODELS:
        where = local_weights(m.spec)
        rows.append(
            {
                "name": m.name,
                "spec": m.spec,
                "description": m.description,
                "paper": m.paper,
                "available": where is not None,
                "where": where or "",
            }
        )
    return rows


# ----------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec. kind: demo | tiny | tag | file | local-dir | hf-hub | arch."""

    raw: str
    kind: str
    arch: str
    tag: str = ""
    path: str = ""


def _open_clip():
    import open_clip  # imported lazily: it is slow to import

    if CONFIG_DIR.is_dir() and not getattr(_open_clip, "_registered", False):
        open_clip.add_model_config(CONFIG_DIR)  # our configs, registered the open_clip way
        _open_clip._registered = True
    return open_clip


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec string; raise UserError naming the valid forms on bad input."""
    spec = (spec or "").strip()
    oc = _open_clip()
    forms = (
        "valid forms: demo, tiny-test, ARCH/TAG (e.g. ViT-B-32/openai), ARCH:/path/weights, "
        "local-dir:/path, hf-hub:org/repo, ARCH (with --random-weights)"
    )
    if not spec:
        raise UserError(f"empty model spec; {forms}")
    if spec == "demo":
        return ModelSpec(spec, "demo", "demo", path=str(DEMO_DIR))
    if spec == "tiny-test":
        return ModelSpec(spec, "tiny", TINY_ARCH)
    if spec.startswith("local-dir:"):
        path = spec[len("local-dir:") :]
        if not Path(path).expanduser().is_dir():
            raise UserError(f"local-dir folder not found: {path}")
        return ModelSpec(spec, "local-dir", f"local-dir:{path}", path=str(Path(path).expanduser()))
    if spec.startswith("hf-hub:"):
        return ModelSpec(spec, "hf-hub", spec)
    archs = set(oc.list_models())
    if ":" in spec:
        arch, path = spec.split(":", 1)
        if arch not in archs:
            raise UserError(f"unknown architecture {arch!r}; see `python -m engine models --all`")
        if not Path(path).expanduser().is_file():
            raise UserError(f"checkpoint file not found: {path}")
        return ModelSpec(spec, "file", arch, path=str(Path(path).expanduser()))
    if "/" in spec:
        arch, tag = spec.split("/", 1)
        if arch not in archs:
            raise UserError(f"unknown architecture {arch!r}; see `python -m engine models --all`")
        tags = oc.list_pretrained_tags_by_model(arch)
        if tag not in tags:
            raise UserError(f"unknown pretrained tag {tag!r} for {arch}; valid: {', '.join(tags)}")
        return ModelSpec(spec, "tag", arch, tag=tag)
    if spec in archs:
        return ModelSpec(spec, "arch", spec)
    known = ", ".join(m.spec for m in MODELS)
    raise UserError(f"unknown model {spec!r}; known: {known}; {forms}")


def _hf_cached(hf_hub: str) -> str | None:
    """Path of a hub checkpoint in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    # open_clip's convention: 'org/repo/' (default file name) or 'org/repo/file'
    repo, filename = os.path.split(hf_hub)
    names = (
        [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    )
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    for name in names:
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def local_weights(spec: str) -> str | None:
    """Where the weights of `spec` are on this machine, or None if they would need a download."""
    try:
        s = parse_spec(spec)
    except UserError:
        return None
    if s.kind == "demo":
        f = DEMO_DIR / "open_clip_model.safetensors"
        return str(f) if f.is_file() else None
    if s.kind == "tiny":
        return "random init (seeded)"
    if s.kind in ("file", "local-dir"):
        return s.path
    if s.kind == "tag":
        cfg = _open_clip().get_pretrained_cfg(s.arch, s.tag)
        if cfg.get("hf_hub"):
            return _hf_cached(cfg["hf_hub"])
        url = cfg.get("url", "")
        f = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        return str(f) if url and f.is_file() else None
    if s.kind == "hf-hub":
        return _hf_cached(s.arch[len("hf-hub:") :] + "/")
    return None


# ----------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class ModelDims:
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_embed: int
    image_size: int
    patch_size: int
    grid: int

    @property
    def n_tokens(self) -> int:
        return self.grid * self.grid + 1


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


# ----------------------------------------------------------------------------------------- weights


@dataclass
class ViTWeights:
    """The vision tower's weights needed by the decomposition, by their state-dict names.

    w_in: [layer, 3*d_model, d_model] (`attn.in_proj_weight`), b_in: [layer, 3*d_model],
    w_out: [layer, d_model, d_model] (`attn.out_proj.weight`), b_out: [layer, d_model],
    ln_post_weight/ln_post_bias: [d_model], ln_post_eps, proj: [d_model, d_embed],
    ln_1_weight/ln_1_bias: [layer, d_model], ln_1_eps.
    """

    n_heads: int
    w_in: Tensor
    b_in: Tensor
    w_out: Tensor
    b_out: Tensor
    ln_1_weight: Tensor
    ln_1_bias: Tensor
    ln_1_eps: float
    ln_post_weight: Tensor
    ln_post_bias: Tensor
    ln_post_eps: float
    proj: Tensor

    @property
    def n_layers(self) -> int:
        return self.w_in.shape[0]

    @property
    def d_model(self) -> int:
        return self.w_in.shape[2]


def vision_weights(lm: LoadedModel | torch.nn.Module) -> ViTWeights:
    """Read the vision tower's weights from its state dict (names are stable across open_clip)."""
    model = lm.model if isinstance(lm, LoadedModel) else lm
    v = model.visual
    sd = {k: t.detach() for k, t in v.state_dict().items()}
    n_layers = len(v.transformer.resblocks)
    d_model = v.transformer.width
    p = "transformer.resblocks.{}."

    def stack(suffix: str, default_shape=None) -> Tensor:
        out = []
        for i in range(n_layers):
            key = p.format(i) + suffix
            if key in sd:
                out.append(sd[key])
            else:  # a bias-free projection: zeros of the right shape
                out.append(torch.zeros(default_shape, dtype=sd[p.format(i) + "ln_1.weight"].dtype))
        return torch.stack(out)

    return ViTWeights(
        n_heads=v.transformer.resblocks[0].attn.num_heads,
        w_in=stack("attn.in_proj_weight"),
        b_in=stack("attn.in_proj_bias", (3 * d_model,)),
        w_out=stack("attn.out_proj.weight"),
        b_out=stack("attn.out_proj.bias", (d_model,)),
        ln_1_weight=stack("ln_1.weight"),
        ln_1_bias=stack("ln_1.bias", (d_model,)),
        ln_1_eps=float(v.transformer.resblocks[0].ln_1.eps),
        ln_post_weight=sd["ln_post.weight"],
        ln_post_bias=sd.get("ln_post.bias", torch.zeros(d_model)),
        ln_post_eps=float(v.ln_post.eps),
        proj=sd["proj"],
    )


# ----------------------------------------------------------------------------------------- capture


@dataclass
class VisionCapture:
    """Inputs captured by forward hooks during one `encode_image` call.

    embed:    [image, d_model]          class-token row of `ln_pre`'s output (the residual stream's start)
    attn_in:  {layer: [image, token, d_model]}  `ln_1` output of each chosen layer (attention's input)
    attn_out: [image, layer, d_model]   class-token row of each layer's attention output (all layers)
    mlp_out:  [image, layer, d_model]   class-token row of each layer's MLP output (all layers)
    resid:    [image, d_model]          class-token row of the final residual (`ln_post`'s input)
    output:   [image, d_embed]          `encode_image` (unnormalised)
    """

    embed: Tensor
    attn_in: dict[int, Tensor]
    attn_out: Tensor
    mlp_out: Tensor
    resid: Tensor
    output: Tensor


def _first(x):
    return x[0] if isinstance(x, tuple) else x


@torch.no_grad()
def capture(
    lm: LoadedModel | torch.nn.Module, pixels: Tensor, layers: Sequence[int]
) -> VisionCapture:
    """Run `encode_image` on `pixels` [image, 3, H, W] with hooks on stable module paths."""
    model = lm.model if isinstance(lm, LoadedModel) else lm
    v = model.visual
    blocks = v.transformer.resblocks
    layers = sorted(set(int(i) for i in layers))
    seen: dict[str, Tensor] = {}
    bf = getattr(v.transformer, "batch_first", True)

    def cls(t: Tensor) -> Tensor:  # class-token row, whatever the layout: [image, d_model]
        return t[:, 0] if bf else t[0]

    def bt(t: Tensor) -> Tensor:  # to [image, token, d_model]
        return t if bf else t.transpose(0, 1)

    hooks = []
    try:
        hooks.append(
            v.ln_pre.register_forward_hook(lambda m, i, o: seen.__setitem__("embed", cls(o)))
        )
        for i, blk in enumerate(blocks):
            hooks.append(
                blk.attn.register_forward_hook(
                    lambda m, inp, o, i=i: seen.__setitem__(f"attn_out{i}", cls(_first(o)))
                )
            )
            hooks.append(
                blk.mlp.register_forward_hook(
                    lambda m, inp, o, i=i: seen.__setitem__(f"mlp_out{i}", cls(o))
                )
            )
            if i in layers:
                hooks.append(
                    blk.ln_1.register_forward_hook(
                        lambda m, inp, o, i=i: seen.__setitem__(f"attn_in{i}", bt(o))
                    )
                )

        def post_hook(m, inp):
            x = inp[0]
            seen["resid"] = x if x.dim() == 2 else cls(x)

        hooks.append(v.ln_post.register_forward_pre_hook(post_hook))
        dtype = next(v.parameters()).dtype
        output = model.encode_image(pixels.to(device=next(v.parameters()).device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
    n = len(blocks)
    return VisionCapture(
        embed=seen["embed"],
        attn_in={i: seen[f"attn_in{i}"] for i in layers},
        attn_out=torch.stack([seen[f"attn_out{i}"] for i in range(n)], dim=1),
        mlp_out=torch.stack([seen[f"mlp_out{i}"] for i in range(n)], dim=1),
        resid=seen["resid"],
        output=output,
    )


# ----------------------------------------------------------------------------------------- text


@torch.no_grad()
def encode_text(lm: LoadedModel, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """Unit-normalised text embeddings [text, d_embed] (fp32, on CPU)."""
    out = []
    for s in range(0, len(texts), batch_size):
        tokens = lm.tokenizer(list(texts[s : s + batch_size])).to(lm.device)
        e = lm.model.encode_text(tokens).float()
        out.append(torch.nn.functional.normalize(e, dim=-1).cpu())
    if not out:
        return torch.zeros(0, lm.dims.d_embed)
    return torch.cat(out)


def preprocess_images(lm: LoadedModel, images: Sequence) -> Tensor:
    """PIL images -> pixels [image, 3, H, W] with the model's own transform."""
    return torch.stack([lm.preprocess(im) for im in images])


def list_open_clip_vits() -> list[dict]:
    """Every open_clip ViT architecture/pretrained tag pair (support is checked at load time)."""
    oc = _open_clip()
    rows = []
    for arch, tag in oc.list_pretrained():
        if not arch.startswith("ViT-"):
            continue
        spec = f"{arch}/{tag}"
        where = local_weights(spec)
        rows.append(
            {
                "name": spec,
                "spec": spec,
                "description": "open_clip pretrained",
                "paper": False,
                "available": where is not None,
                "where": where or "",
            }
        )
    return rows
