"""Which of open_clip's architectures this tool can decompose, and "did you mean" for names.

`random_weight_architectures()` answers with `check_supported` itself, not a hand-kept list: each
open_clip architecture is built on PyTorch's meta device (no memory, no weights) with one layer
per tower (every block of a tower is built from the same config, so one block shows what all of
them hold), and checked. ResNet image towers and Hugging Face text towers (which need transformers)
are refused from the config alone. timm towers (SigLIP) cannot be shortened, so they are built
whole (on the meta device, about a second each): the answers are kept in `architectures/` under
the tool's cache root (`engine.model.cache`), keyed by the open_clip and timm versions and the
source of the support checks, so only the first `models` on a machine pays for it.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.errors import UserError
from engine.model.cache import ARCHITECTURES, cache_dir
from engine.model.specs import CONFIG_DIR, _open_clip

CHECK_SOURCES = ("loading.py", "timm_tower.py", "discovery.py")


@dataclass(frozen=True)
class Architecture:
    name: str
    usable: bool  # decomposable: usable with --random-weights (and with its checkpoints)
    reason: str = ""  # why not, in words (empty when usable)
    stores: bool = True  # a store can be built (every usable tower, SigLIP's included)


def _not_open_clip_vit(cfg: dict) -> str:
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "timm_model_name" in vision:
        return ""  # built whole and checked (SigLIP towers are supported)
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
    if "timm_model_name" not in vision:
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
    return Architecture(name, True, stores=True)  # attention-pooled towers build stores too


def _cache_key(names: list[str]) -> str:
    import open_clip
    import timm

    h = hashlib.sha256(json.dumps([open_clip.__version__, timm.__version__, names]).encode())
    for f in CHECK_SOURCES:  # the support checks themselves
        h.update((Path(__file__).parent / f).read_bytes())
    return h.hexdigest()[:32]


@functools.lru_cache(maxsize=1)
def list_architectures() -> tuple[Architecture, ...]:
    """Every open_clip architecture (ours included), checked, or read from the cache folder."""
    names = list(_open_clip().list_models())
    f = cache_dir(ARCHITECTURES) / f"{_cache_key(names)}.json"
    try:
        return tuple(Architecture(**a) for a in json.loads(f.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    out = tuple(check_architecture(n) for n in names)
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([asdict(a) for a in out]))
        os.replace(tmp, f)
    except OSError:
        pass  # no cache folder: checked again next time
    return out


def project_configs() -> frozenset[str]:
    """The project's own architectures (engine/data/model_configs: the demo model's and the test
    models'): reached through their named entries (`demo`, `tiny-test`), never listed to users
    as architectures."""
    return frozenset(p.stem for p in CONFIG_DIR.glob("*.json"))


def random_weight_architectures(stores: bool = True) -> list[str]:
    """The architectures usable with `--random-weights`, in open_clip's order (the project's own
    configs left out); `stores`: only those a store can be built from (False: also the
    verify-only attention-pooled towers)."""
    own = project_configs()
    return [a.name for a in list_architectures()
            if a.usable and (a.stores or not stores) and a.name not in own]  # fmt: skip


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """' (did you mean 'X'?)' for the closest valid name, case-insensitively, or ''."""
    by_lower: dict[str, str] = {}
    for v in valid:
        by_lower.setdefault(str(v).lower(), str(v))
    got = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[got[0]]!r}?)" if got else ""
