"""Model specs and the registry of named models (data, plus where their weights are locally).

Specs (`parse_spec`):
  `demo`                              the bundled demo model (engine/data/demo_model, local-dir)
  `demo-biased`                       the demo model trained with a planted shortcut
  `tiny-test`                         a 2-layer random ViT for fast tests (always random weights)
  `ARCH/TAG`  e.g. `ViT-B-32/openai`  open_clip pretrained tag (cached locally, else downloaded)
  `ARCH:/path/to/weights.safetensors` an open_clip architecture with a local checkpoint file
  `local-dir:/path`                   an open_clip folder (open_clip_config.json + weights)
  `hf-hub:org/repo`                   an open_clip model on the Hugging Face hub (or its local cache)
  `ARCH`                              architecture only: needs `random_weights=True`
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEMO_DIR = DATA_DIR / "demo_model"
DEMO_BIASED_DIR = DATA_DIR / "demo_model_biased"  # trained on the biased world (world.BIAS)
CONFIG_DIR = DATA_DIR / "model_configs"
TINY_ARCH = "ClipInterpretTiny"


@dataclass(frozen=True)
class ModelEntry:
    """A named model of the registry: `spec` is what `load_model` takes."""

    name: str
    spec: str
    description: str
    paper: bool = False


# The bundled models. The paper's six are listed from engine.sources.reference (by the `models`
# command); OpenAI tags need QuickGELU (handled in load_model).
MODELS: tuple[ModelEntry, ...] = (
    ModelEntry("demo", "demo", "bundled small CLIP trained on the procedural demo world"),
    ModelEntry(
        "demo-biased",
        "demo-biased",
        "bundled small CLIP trained with a planted shortcut (shape ~ background, 90 %)",
    ),
    ModelEntry("tiny-test", "tiny-test", "2-layer random ViT for tests (random weights only)"),
    # SigLIP / SigLIP 2: timm towers with attention pooling (engine.model.timm_tower); every
    # other open_clip SigLIP config/tag is listed by `models --all`
    ModelEntry(
        "ViT-B-16-SigLIP/webli", "ViT-B-16-SigLIP/webli", "SigLIP B/16, 224 px (attention pooling)"
    ),
    ModelEntry(
        "ViT-B-16-SigLIP2/webli",
        "ViT-B-16-SigLIP2/webli",
        "SigLIP 2 B/16, 224 px (attention pooling)",
    ),
    ModelEntry(
        "ViT-SO400M-14-SigLIP/webli",
        "ViT-SO400M-14-SigLIP/webli",
        "SigLIP SO400M/14, 224 px (attention pooling)",
    ),
    ModelEntry(
        "ViT-L-16-SigLIP2-256/webli",
        "ViT-L-16-SigLIP2-256/webli",
        "SigLIP 2 L/16, 256 px (attention pooling)",
    ),
)


def list_models(extra: Sequence[ModelEntry] = ()) -> list[dict]:
    """`extra` entries then the bundled ones, with local availability:
    [{name, spec, description, paper, available, where}]."""
    rows = []
    for m in (*extra, *MODELS):
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
        from engine.model.timm_tower import register_timm_models

        register_timm_models()  # the tiny SigLIP-shaped timm tower its config names
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
    if spec == "demo-biased":
        return ModelSpec(spec, "demo", "demo-biased", path=str(DEMO_BIASED_DIR))
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
            raise UserError(
                f"unknown architecture {arch!r}{_hint(arch, archs)}; see `python -m engine models`"
            )
        if not Path(path).expanduser().is_file():
            raise UserError(f"checkpoint file not found: {path}")
        return ModelSpec(spec, "file", arch, path=str(Path(path).expanduser()))
    if "/" in spec:
        arch, tag = spec.split("/", 1)
        if arch not in archs:
            pairs = [f"{a}/{t}" for a, t in oc.list_pretrained()]
            hint = _hint(spec, pairs) or _hint(arch, archs)
            raise UserError(f"unknown architecture {arch!r}{hint}; see `python -m engine models`")
        tags = oc.list_pretrained_tags_by_model(arch)
        if tag not in tags:
            raise UserError(
                f"unknown pretrained tag {tag!r} for {arch}; valid: "
                f"{', '.join(tags) or 'none (use --random-weights)'}{_hint(tag, tags)}"
            )
        return ModelSpec(spec, "tag", arch, tag=tag)
    if spec in archs:
        return ModelSpec(spec, "arch", spec)
    hint = _hint(spec, [*(m.spec for m in MODELS), *archs])
    raise UserError(f"unknown model {spec!r}{hint} (`python -m engine models` lists them); {forms}")


def _hint(name: str, valid) -> str:
    from engine.model.discovery import did_you_mean

    return did_you_mean(name, valid)


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
        f = Path(s.path) / "open_clip_model.safetensors"
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
