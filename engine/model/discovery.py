"""Which of open_clip's architectures this tool can decompose, and "did you mean" for names.

`random_weight_architectures()` answers with `check_supported` itself, not a hand-kept list: each
open_clip architecture is built on PyTorch's meta device (no memory, no weights) with one layer
per tower (every block of a tower is built from the same config, so one block shows what all of
them hold), and checked. Towers that are not open_clip's own ViT (timm or ResNet image towers,
Hugging Face text towers) are refused from the config alone, as building them is slow and
`check_supported` refuses them anyway.
"""

from __future__ import annotations

import copy
import difflib
import functools
from collections.abc import Iterable
from dataclasses import dataclass

from engine.errors import UserError
from engine.model.specs import _open_clip


@dataclass(frozen=True)
class Architecture:
    name: str
    usable: bool  # decomposable: usable with --random-weights (and with its checkpoints)
    reason: str = ""  # why not, in words (empty when usable)


def _not_open_clip_vit(cfg: dict) -> str:
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "timm_model_name" in vision:
        return f"timm image tower ({vision['timm_model_name']}), not an open_clip ViT"
    if not isinstance(vision.get("layers"), int):
        return "ResNet image tower, not a ViT"
    if "hf_model_name" in text:
        return f"Hugging Face text tower ({text['hf_model_name']}) needs transformers"
    return ""


def check_architecture(name: str) -> Architecture:
    """Build `name` (one layer per tower, meta device) and run `check_supported` on it."""
    import torch

    from engine.model.loading import _quiet_open_clip, check_supported

    oc = _open_clip()
    cfg = oc.get_model_config(name)
    if cfg is None:
        return Architecture(name, False, "no open_clip config")
    why = _not_open_clip_vit(cfg)
    if why:
        return Architecture(name, False, why)
    vision, text = copy.deepcopy(cfg["vision_cfg"]), copy.deepcopy(cfg.get("text_cfg", {}))
    vision["layers"] = 1  # [layer] identical blocks: one shows them all
    if isinstance(text.get("layers"), int):
        text["layers"] = 1
    try:
        with _quiet_open_clip(), torch.device("meta"):
            model = oc.create_model(
                name, pretrained=None, device="meta", vision_cfg=vision, text_cfg=text
            )
        check_supported(model, name)
    except UserError as e:
        return Architecture(name, False, str(e).removeprefix(f"{name}: "))
    except Exception as e:  # an architecture open_clip cannot build here
        return Architecture(name, False, f"cannot be built: {type(e).__name__}")
    return Architecture(name, True)


@functools.lru_cache(maxsize=1)
def list_architectures() -> tuple[Architecture, ...]:
    """Every open_clip architecture (ours included), checked; ~2 s, once per process."""
    return tuple(check_architecture(n) for n in _open_clip().list_models())


def random_weight_architectures() -> list[str]:
    """The architectures usable with `--random-weights`, in open_clip's order."""
    return [a.name for a in list_architectures() if a.usable]


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """' (did you mean 'X'?)' for the closest valid name, case-insensitively, or ''."""
    by_lower: dict[str, str] = {}
    for v in valid:
        by_lower.setdefault(str(v).lower(), str(v))
    got = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[got[0]]!r}?)" if got else ""
