"""timm ViT towers with attention pooling (SigLIP, SigLIP 2): support check, weights, hooks.

open_clip builds these as `TimmModel` whose `trunk` is timm's `VisionTransformer` with
`global_pool='map'` (`AttentionPoolLatent`) and an empty `head`. Weights are read by state-dict
name (`trunk.blocks.{l}.attn.proj`, `trunk.norm`, `trunk.attn_pool.{latent,q,kv,proj}`); inputs
are captured with forward hooks on stable module paths (`trunk.norm_pre`,
`trunk.blocks.{l}.attn|attn.qkv|mlp`, a pre-hook on `trunk.norm`, `trunk.attn_pool.kv|mlp`).
Nothing of timm or open_clip is copied or patched. The math is `engine.core.pooling`.

Support is an exact parameter set per block, as for open_clip's plain block: any other
parameter (LayerScale `ls1.gamma`, qk-norm `attn.q_norm.weight`, a gate, SwiGLU `mlp.fc1_g`,
register or class tokens, a pool position embedding, ...) is refused by its name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.core import pooling
from engine.core.types import ModelDims
from engine.errors import UnsupportedModel
from engine.model.hooks import own_thread

# What the class-token code paths (`vision_weights`, `capture`) say to a SigLIP tower
STORE_NOT_YET = (
    "an attention-pooled tower (SigLIP / SigLIP 2) has no class-token weights: its "
    "decomposition, stores and maps go through the pooled path (`pooled_weights`, "
    "`capture_pooled`, engine.core.pooling)"
)
BLOCK_PARAMS = frozenset(
    {
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    }
)
BLOCK_REQUIRED = frozenset({"norm1.weight", "attn.qkv.weight", "attn.proj.weight"})
BLOCK_MODULES = frozenset(
    {"norm1", "attn", "attn.qkv", "attn.proj", "norm2", "mlp", "mlp.fc1", "mlp.fc2"}
)
BLOCK_ACTIVATION = "mlp.act"  # any elementwise activation (the MLP term is captured whole)
TRUNK_PARAMS = frozenset(
    {
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "pos_embed",
        "norm_pre.weight",
        "norm_pre.bias",
        "norm.weight",
        "norm.bias",
    }
)
POOL_PARAMS = frozenset(
    {
        "latent",
        "q.weight",
        "q.bias",
        "kv.weight",
        "kv.bias",
        "proj.weight",
        "proj.bias",
        "norm.weight",
        "norm.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    }
)
POOL_REQUIRED = frozenset({"latent", "kv.weight", "proj.weight"})
_KNOWN_REASONS = (  # friendlier names for the unexpected parameters we know
    ("ls1", "LayerScale"),
    ("ls2", "LayerScale"),
    ("attn.q_norm", "qk-norm"),
    ("attn.k_norm", "qk-norm"),
    ("attn.norm", "an attention output norm"),
    ("attn.gate", "gated attention"),
    ("mlp.fc1_g", "SwiGLU"),
    ("mlp.fc1_x", "SwiGLU"),
    ("mlp.norm", "an MLP norm"),
    ("cls_token", "a class token"),
    ("reg_token", "register tokens"),
    ("rope", "rotary position embedding"),
    ("attn_pool.pos_embed", "a pool position embedding"),
    ("attn_pool.q_norm", "qk-norm in the pool"),
    ("attn_pool.k_norm", "qk-norm in the pool"),
    ("head.", "a classifier head"),
    ("fc_norm", "a norm after pooling"),
)


def is_timm_tower(model: torch.nn.Module) -> bool:
    """Is `model.visual` open_clip's timm adapter (`TimmModel`)?"""
    v = getattr(model, "visual", None)
    return type(v).__name__ == "TimmModel" and hasattr(v, "trunk")


def _unexpected(names: set[str], where: str, spec: str) -> UnsupportedModel:
    listed = sorted(n for n in names if not any(n.startswith(o + ".") for o in names))
    reasons = sorted(
        {why for n in listed for pre, why in _KNOWN_REASONS if n == pre or n.startswith(pre)}
    )
    shown = ", ".join(listed[:6]) + (f" (+{len(listed) - 6} more)" if len(listed) > 6 else "")
    return UnsupportedModel(
        f"{spec}: {where} has parameters or modules the exact decomposition does not know: "
        f"{shown}" + (f" ({', '.join(reasons)})" if reasons else "")
    )


def _modules(m: torch.nn.Module) -> set[str]:
    return {
        n
        for n, sub in m.named_modules()
        if n and not isinstance(sub, torch.nn.Identity | torch.nn.Dropout)
    }


def check_timm_supported(model: torch.nn.Module, spec: str = "") -> None:
    """Refuse a timm tower the pooled decomposition cannot handle exactly, naming the reason.

    Accepts timm's `VisionTransformer` with `AttentionPoolLatent` pooling (one latent query,
    token pooling), pre-norm `Block`s of exactly `BLOCK_PARAMS`, a LayerNorm final norm, no
    prefix tokens, nothing after the pool (`fc_norm`, `head`, open_clip's `head` all empty)."""
    from timm.layers import Attention as TimmAttention
    from timm.layers import AttentionPoolLatent
    from timm.models.vision_transformer import Block, VisionTransformer

    v = model.visual
    t = v.trunk
    if not isinstance(t, VisionTransformer):
        raise UnsupportedModel(
            f"{spec}: the timm trunk is a {type(t).__name__}, not timm's VisionTransformer"
        )
    top = {n for n, _ in t.named_parameters() if not n.startswith(("blocks.", "attn_pool."))}
    top |= {"head." + n for n, _ in v.head.named_parameters()}  # open_clip's adapter head
    if top - TRUNK_PARAMS:
        raise _unexpected(top - TRUNK_PARAMS, "the vision tower", spec)
    pool = getattr(t, "attn_pool", None)
    if not isinstance(pool, AttentionPoolLatent):
        raise UnsupportedModel(
            f"{spec}: timm tower with global_pool={getattr(t, 'global_pool', '?')!r}: only "
            "attention pooling ('map', AttentionPoolLatent) is decomposed"
        )
    pparams = {n for n, _ in pool.named_parameters()}
    if pparams - POOL_PARAMS:
        raise _unexpected({"attn_pool." + n for n in pparams - POOL_PARAMS}, "the pool", spec)
    if POOL_REQUIRED - pparams:
        raise UnsupportedModel(
            f"{spec}: the pool lacks {', '.join(sorted(POOL_REQUIRED - pparams))}"
        )
    if pool.latent_len != 1 or pool.mlp is None:
        raise UnsupportedModel(
            f"{spec}: attention pool with {pool.latent_len} latent queries"
            + (" and no output MLP" if pool.mlp is None else "")
            + " (one latent query with its MLP branch only)"
        )
    for name in ("norm",):
        if not isinstance(getattr(pool, name), torch.nn.LayerNorm | torch.nn.Identity):
            raise UnsupportedModel(f"{spec}: attn_pool.{name} is not a LayerNorm")
    if not getattr(t, "pool_include_prefix", False) and getattr(t, "num_prefix_tokens", 0):
        raise UnsupportedModel(f"{spec}: prefix tokens excluded from the pool are not supported")
    if not isinstance(t.norm, torch.nn.LayerNorm):
        raise UnsupportedModel(f"{spec}: the final norm `norm` is not a LayerNorm")
    if not isinstance(t.norm_pre, torch.nn.LayerNorm | torch.nn.Identity):
        raise UnsupportedModel(f"{spec}: norm_pre is not a LayerNorm")
    for i, blk in enumerate(t.blocks):
        params = {n for n, _ in blk.named_parameters()}
        extra = (params - BLOCK_PARAMS) | (_modules(blk) - BLOCK_MODULES - {BLOCK_ACTIVATION})
        extra |= {n for n, _ in blk.named_buffers()}
        if extra:
            raise _unexpected(extra, f"block {i}", spec)
        if BLOCK_REQUIRED - params:
            raise UnsupportedModel(
                f"{spec}: block {i} lacks {', '.join(sorted(BLOCK_REQUIRED - params))}"
            )
        if type(blk) is not Block or type(blk.attn) is not TimmAttention:
            raise UnsupportedModel(
                f"{spec}: block {i} is a {type(blk).__name__} with {type(blk.attn).__name__}, "
                "not timm's pre-norm Block with Attention"
            )
        if not isinstance(blk.norm1, torch.nn.LayerNorm):
            raise UnsupportedModel(f"{spec}: block {i} norm1 is not a LayerNorm")


def timm_dims(model: torch.nn.Module) -> ModelDims:
    t = model.visual.trunk
    attn = t.blocks[0].attn
    pe = t.patch_embed
    return ModelDims(
        n_layers=len(t.blocks),
        n_heads=int(attn.num_heads),
        d_model=int(t.embed_dim),
        d_head=int(attn.head_dim),
        d_embed=int(t.attn_pool.proj.out_features),
        image_size=int(pe.img_size[0]),
        patch_size=int(pe.patch_size[0]),
        grid=int(pe.grid_size[0]),
    )


def pool_info(model: torch.nn.Module) -> dict:
    """What a store or report says about the pooling: kind and pool heads."""
    pool = model.visual.trunk.attn_pool
    return {"pooling": "map", "n_pool_heads": int(pool.num_heads)}


def pooled_weights(model: torch.nn.Module) -> pooling.PooledWeights:
    """Read the tower's weights by state-dict name (`trunk.blocks.{l}.attn.proj`, `trunk.norm`,
    `trunk.attn_pool.*`)."""
    t = model.visual.trunk
    sd = {k: x.detach() for k, x in t.state_dict().items()}
    n_layers = len(t.blocks)
    d_model = int(t.embed_dim)
    attn = t.blocks[0].attn

    def stack(suffix: str) -> torch.Tensor:
        out = []
        for i in range(n_layers):
            key = f"blocks.{i}.{suffix}"
            out.append(
                sd[key] if key in sd else torch.zeros(d_model, dtype=sd["norm.weight"].dtype)
            )
        return torch.stack(out)

    pool = t.attn_pool
    d_pool = sd["attn_pool.kv.weight"].shape[0] // 2
    latent = sd["attn_pool.latent"].reshape(-1)  # [latent_dim] (one latent query)
    if "attn_pool.q.weight" in sd:
        q = latent @ sd["attn_pool.q.weight"].T + sd.get("attn_pool.q.bias", 0.0)
    else:  # q_proj=False: the latent is the query
        q = latent
    zeros = torch.zeros(d_pool, dtype=latent.dtype)
    d_embed = sd["attn_pool.proj.weight"].shape[0]
    return pooling.PooledWeights(
        n_heads=int(attn.num_heads),
        d_head=int(attn.head_dim),
        w_out=torch.stack([sd[f"blocks.{i}.attn.proj.weight"] for i in range(n_layers)]),
        b_out=stack("attn.proj.bias"),
        norm_weight=sd["norm.weight"],
        norm_bias=sd.get("norm.bias", torch.zeros(d_model)),
        norm_eps=float(t.norm.eps),
        n_pool_heads=int(pool.num_heads),
        pool_q=q,
        pool_w_v=sd["attn_pool.kv.weight"][d_pool:],
        pool_b_v=sd["attn_pool.kv.bias"][d_pool:] if "attn_pool.kv.bias" in sd else zeros,
        pool_w_proj=sd["attn_pool.proj.weight"],
        pool_b_proj=sd.get("attn_pool.proj.bias", torch.zeros(d_embed)),
    )


@torch.no_grad()
def capture_pooled(
    model: torch.nn.Module, pixels: torch.Tensor, layers: Sequence[int]
) -> pooling.PooledCapture:
    """Run `encode_image` on `pixels` [image, 3, H, W] with forward hooks; every token kept."""
    t = model.visual.trunk
    layers = sorted(set(int(i) for i in layers))
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return own_thread(lambda m, inp, out: seen.__setitem__(name, out))

    hooks = []
    try:
        hooks.append(t.norm_pre.register_forward_hook(keep("embed")))
        for i, blk in enumerate(t.blocks):
            hooks.append(blk.attn.register_forward_hook(keep(f"attn_out{i}")))
            hooks.append(blk.mlp.register_forward_hook(keep(f"mlp_out{i}")))
            if i in layers:
                hooks.append(blk.attn.qkv.register_forward_hook(keep(f"qkv{i}")))
        hooks.append(
            t.norm.register_forward_pre_hook(
                own_thread(lambda m, inp: seen.__setitem__("resid", inp[0]))
            )
        )
        hooks.append(t.attn_pool.kv.register_forward_hook(keep("pool_kv")))
        hooks.append(t.attn_pool.mlp.register_forward_hook(keep("pool_mlp")))
        param = next(t.parameters())
        output = model.encode_image(pixels.to(device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
    n = len(t.blocks)
    return pooling.PooledCapture(
        embed=seen["embed"],
        qkv={i: seen[f"qkv{i}"] for i in layers},
        attn_out=torch.stack([seen[f"attn_out{i}"] for i in range(n)], dim=1),
        mlp_out=torch.stack([seen[f"mlp_out{i}"] for i in range(n)], dim=1),
        resid=seen["resid"],
        pool_kv=seen["pool_kv"],
        pool_mlp=seen["pool_mlp"][:, 0],  # the one latent query: [image, d_embed]
        output=output,
    )


def decompose_pooled_images(model: torch.nn.Module, pixels: torch.Tensor, layers, weights=None):
    """capture + decompose for a MAP-pooled timm tower -> `PooledDecomposition`."""
    w = weights if weights is not None else pooled_weights(model)
    return pooling.decompose_pooled(w, capture_pooled(model, pixels, layers), layers)


# A tiny SigLIP-shaped timm tower for fast tests (`ClipInterpretTinySigLIP`, engine/data/
# model_configs): registered with timm the way timm registers its own models.
TINY_TIMM_NAME = "clip_interpret_tiny_siglip"
TINY_TIMM_ARGS = dict(
    img_size=32,
    patch_size=8,
    embed_dim=64,
    depth=3,
    num_heads=4,
    class_token=False,
    global_pool="map",
)


def tiny_siglip_trunk(pretrained: bool = False, **kwargs):
    """timm VisionTransformer in SigLIP's shape (no class token, MAP pooling), 3 blocks of
    width 64; `kwargs` override (tests build unsupported variants this way)."""
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    args = dict(TINY_TIMM_ARGS, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory's
        kwargs.pop(key, None)
    args.update(kwargs)
    return VisionTransformer(**args)


def register_timm_models() -> None:
    """Register the tiny tower with timm once (what open_clip's TimmModel creates by name)."""
    import timm
    from timm.models import register_model

    if TINY_TIMM_NAME in timm.list_models(TINY_TIMM_NAME):
        return

    def clip_interpret_tiny_siglip(pretrained: bool = False, **kwargs):
        return tiny_siglip_trunk(pretrained, **kwargs)

    register_model(clip_interpret_tiny_siglip)
