"""Text-bank embeddings cached on disk, by (model, weights hash, tokenizer, libraries, texts).

Embedding a bank of a few thousand descriptions costs minutes on a CPU, and it is the same array
every time the same weights see the same texts. The first `interpret` over a bank encodes it and
writes `[text, d_embed]` float32 here; every later run (on the same store or on any other store
built from the same weights) reads it back and encodes nothing.

Location: `text-embeddings/` under the tool's cache root (`engine.model.cache`: default
`~/.cache/clip-interpret`, or `$CLIP_INTERPRET_CACHE`). One `<key>.npy` per (model, bank) with a
readable `<key>.json` beside it; deleting the folder only costs the next run its encoding. The
cache is not a store: a store stays self-contained and read-only after its build.

The key needs a weights identity that is known without loading the model: the store's recorded
`weights_hash` (a sha256 of the checkpoint, verified against the weights when the store was built
and again whenever the bank is encoded) plus what selects the architecture and text tower. Random
weights are identified by spec and seed; an "unknown" hash is never cached. The root is shared by
every virtualenv of the machine, so the key also holds the tokenizer (the store's recorded one, or
what open_clip's config names) and the versions of open_clip, torch and transformers (the
tokenizers and the tower's kernels): another environment never reads this one's entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.model.cache import TEXT_EMBEDDINGS, package_versions
from engine.model.cache import cache_dir as _cache_dir

FORMAT = 1  # bump when the encoding (prompting, normalisation, dtype) changes
LIBRARIES = ("open_clip_torch", "torch", "transformers")  # what shapes an encoded text


def cache_dir() -> Path:
    """The text-embeddings folder (see the module docstring); not created here."""
    return _cache_dir(TEXT_EMBEDDINGS)


def tokenizer_identity(info: dict) -> str:
    """The tokenizer that made (or will make) the texts' ids: the store's recorded one
    (`tokenizer`) when it has it, else what open_clip's config of `arch` names (a Hugging Face
    tokenizer and its options, or open_clip's own with its context length). A spec without an
    open_clip config (demo, local-dir, hf-hub) is covered by the model identity."""
    if info.get("tokenizer"):
        return str(info["tokenizer"])
    from engine.model.specs import _open_clip

    arch = str(info.get("arch") or "")
    try:
        cfg = _open_clip().get_model_config(arch) if arch else None
    except Exception:
        cfg = None
    if not cfg:
        return f"config of {arch or 'the model'}"
    text = cfg.get("text_cfg", {})
    return json.dumps({"hf_tokenizer_name": text.get("hf_tokenizer_name"),
                       "tokenizer_kwargs": text.get("tokenizer_kwargs"),
                       "context_length": text.get("context_length")}, sort_keys=True)  # fmt: skip


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 over the texts in order (the bank's identity)."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


def model_identity(spec: str, weights_hash: str, random_weights: bool = False) -> str | None:
    """What fixes the text tower's output, or None when it is not known without loading it.

    Checkpoint weights: the architecture part of the spec (it sets the tower and QuickGELU) and
    the checkpoint hash, so the same file under another path is the same model. Random weights:
    the whole spec and the seed (`random:seedN`), since the hash names only the seed.
    """
    spec, weights_hash = str(spec or ""), str(weights_hash or "")
    if not spec or not weights_hash or weights_hash == "unknown":
        return None
    if random_weights or weights_hash.startswith("random:"):
        return f"{spec}|{weights_hash}"
    if spec.startswith("local-dir:"):
        arch = "local-dir"  # the folder hash covers its config and its checkpoint
    elif spec.startswith("hf-hub:"):
        arch = spec
    elif ":" in spec:
        arch = spec.split(":", 1)[0]  # ARCH:/path/to/checkpoint
    else:
        arch = spec  # demo, ARCH/TAG
    return f"{arch}|{weights_hash}"


@dataclass(frozen=True)
class TextCache:
    """One folder of cached `[text, d_embed]` arrays."""

    root: Path

    @classmethod
    def default(cls) -> TextCache:
        return cls(cache_dir())

    @staticmethod
    def key(model: str, texts: Sequence[str], tokenizer: str = "", libraries=None) -> str:
        """sha256 of everything an entry depends on: format, model, tokenizer, the versions of
        `LIBRARIES` (this environment's unless given) and the texts."""
        libraries = package_versions(*LIBRARIES) if libraries is None else libraries
        blob = json.dumps({"format": FORMAT, "model": model, "tokenizer": tokenizer,
                           "libraries": libraries, "texts": texts_hash(texts)},
                          sort_keys=True)  # fmt: skip
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:40]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def load(self, key: str, n_texts: int, d_embed: int | None = None) -> np.ndarray | None:
        """The cached `[text, d_embed]` float32 array, or None (missing, unreadable, wrong shape,
        not finite: a bad entry is a miss, never an error)."""
        try:
            arr = np.load(self.path(key), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        ok = (
            arr.ndim == 2
            and arr.shape[0] == n_texts
            and (d_embed is None or arr.shape[1] == d_embed)
            and arr.dtype == np.float32
            and bool(np.isfinite(arr).all())
        )
        return arr if ok else None

    def save(self, key: str, emb: np.ndarray, meta: dict) -> bool:
        """Write atomically (temporary file, then rename); False when the folder is not
        writable (the run goes on without a cache)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".npy.tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, np.ascontiguousarray(emb, dtype=np.float32), allow_pickle=False)
                os.replace(tmp, self.path(key))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            side = {**meta, "format": FORMAT, "shape": list(emb.shape)}
            self.path(key).with_suffix(".json").write_text(json.dumps(side, indent=2) + "\n")
            return True
        except OSError:
            return False


@dataclass(frozen=True)
class CachedEmbeddings:
    emb: np.ndarray  # [text, d_embed] float32
    hit: bool  # read from the cache: nothing was encoded
    n_encoded: int  # texts encoded by this call (0 on a hit)
    where: str  # the cache file ("" when the model cannot be identified)


def bank_embeddings(
    info: dict,
    texts: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    *,
    name: str = "bank",
    cache: TextCache | None = None,
    announce: Callable[[str], None] | None = None,
    prepare: Callable[[], object] | None = None,
) -> CachedEmbeddings:
    """`texts` embedded by the store's model (`info`: model_spec, weights_hash, random_weights,
    d_embed), from the cache when there, else through `encode(texts) -> [text, d_embed]`, which
    is then cached. On a miss, `prepare()` runs first (e.g. load and verify the model, so that
    its failure is the only output), then `announce` receives one line (how many texts, where
    the result will be kept)."""
    cache = cache or TextCache.default()
    texts = list(texts)
    model = model_identity(
        info.get("model_spec", ""), info.get("weights_hash", ""), bool(info.get("random_weights"))
    )
    d_embed = int(info["d_embed"]) if info.get("d_embed") else None
    tokenizer = tokenizer_identity(info) if model else ""
    key = cache.key(model, texts, tokenizer) if model else None
    if key is not None:
        got = cache.load(key, len(texts), d_embed)
        if got is not None:
            return CachedEmbeddings(got, True, 0, str(cache.path(key)))
    if prepare is not None:
        prepare()
    if announce is not None:
        kept = f"cached in {cache.root} for reruns" if key else "not cached: weights unknown"
        announce(
            f"encoding {len(texts):,} texts of {name} with {info.get('model_spec', 'the model')} "
            f"({kept})"
        )
    emb = np.asarray(encode(texts), dtype=np.float32)  # [text, d_embed]
    where = ""
    if key is not None:
        meta = {"model": model, "model_spec": info.get("model_spec"), "name": name,
                "tokenizer": tokenizer, "libraries": package_versions(*LIBRARIES),
                "texts_sha256": texts_hash(texts)}  # fmt: skip
        if cache.save(key, emb, meta):
            where = str(cache.path(key))
    return CachedEmbeddings(emb, False, len(texts), where)
