"""One cache root for the tool (text embeddings, architectures), and text-cache keys that tell
environments and tokenizers apart (the root is shared by every virtualenv of the machine)."""

from types import SimpleNamespace

import numpy as np
import pytest

from engine.model import cache as cache_mod
from engine.model import discovery, text_cache
from engine.model.discovery import Architecture
from engine.model.text_cache import LIBRARIES, TextCache, bank_embeddings, tokenizer_identity

pytestmark = pytest.mark.unit

INFO = {"model_spec": "ViT-B-32", "arch": "ViT-B-32", "weights_hash": "random:seed0",
        "random_weights": True, "d_embed": 4}  # fmt: skip
TEXTS = ["a red cube", "a blue ball"]


def _encode(calls):
    def encode(t):
        calls.append(len(t))
        return np.ones((len(t), 4), np.float32)

    return encode


def test_one_root_with_a_folder_per_kind(tmp_path, monkeypatch):
    root = tmp_path / "root"
    monkeypatch.setenv("CLIP_INTERPRET_CACHE", str(root))
    assert text_cache.cache_dir() == root / "text-embeddings"
    assert cache_mod.cache_dir(cache_mod.ARCHITECTURES) == root / "architectures"
    monkeypatch.delenv("CLIP_INTERPRET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_mod.cache_root() == tmp_path / "xdg" / "clip-interpret"
    with pytest.raises(ValueError, match="text-embeddings, architectures"):
        cache_mod.cache_dir("other")


def test_both_caches_write_under_the_root(tmp_path, monkeypatch):
    root = tmp_path / "root"
    monkeypatch.setenv("CLIP_INTERPRET_CACHE", str(root))
    monkeypatch.setattr(discovery, "_open_clip", lambda: SimpleNamespace(list_models=lambda: ["A"]))
    monkeypatch.setattr(discovery, "check_architecture", lambda n: Architecture(n, True))
    assert discovery.list_architectures.__wrapped__() == (Architecture("A", True),)
    assert bank_embeddings(INFO, TEXTS, _encode([])).where
    assert sorted(p.name for p in root.iterdir()) == ["architectures", "text-embeddings"]
    assert len(list((root / "architectures").glob("*.json"))) == 1
    assert len(list((root / "text-embeddings").glob("*.npy"))) == 1


def test_key_holds_libraries_and_tokenizer(tmp_path, monkeypatch):
    versions = cache_mod.package_versions(*LIBRARIES)
    assert versions["torch"] and versions["open_clip_torch"]  # installed here
    k = TextCache.key("m", TEXTS, "tok")
    assert k == TextCache.key("m", TEXTS, "tok", versions)
    assert k != TextCache.key("m", TEXTS, "other tok")
    assert k != TextCache.key("m", TEXTS, "tok", {**versions, "torch": "0.0"})
    assert k != TextCache.key("m", TEXTS, "tok", {**versions, "open_clip_torch": "0.0"})
    assert k != TextCache.key("m", TEXTS, "tok", {**versions, "transformers": "0.0"})
    # another environment (other torch) or another tokenizer: a miss, encoded again
    c, calls = TextCache(tmp_path / "c"), []
    assert not bank_embeddings(INFO, TEXTS, _encode(calls), cache=c).hit
    assert bank_embeddings(INFO, TEXTS, _encode(calls), cache=c).hit
    other = {**INFO, "tokenizer": "standin-hash-v1"}
    assert not bank_embeddings(other, TEXTS, _encode(calls), cache=c).hit
    real = cache_mod.package_versions
    monkeypatch.setattr(text_cache, "package_versions", lambda *p: {**real(*p), "torch": "9.9.9"})
    assert not bank_embeddings(INFO, TEXTS, _encode(calls), cache=c).hit
    assert calls == [2, 2, 2]


def test_tokenizer_identity():
    assert tokenizer_identity({**INFO, "tokenizer": "timm/ViT-B-16-SigLIP"}) == (
        "timm/ViT-B-16-SigLIP"
    )  # recorded by the store: that one
    siglip = tokenizer_identity({"arch": "ViT-B-16-SigLIP"})
    assert "timm/ViT-B-16-SigLIP" in siglip
    plain = tokenizer_identity({"arch": "ViT-B-32"})
    assert plain != siglip and '"context_length": 77' in plain
    assert tokenizer_identity({"arch": "demo"}) == "config of demo"


def test_weights_missing_names_the_hub_cache_in_use(monkeypatch):
    from huggingface_hub import constants

    from engine.model.origin import weights_missing_message
    from engine.model.specs import parse_spec

    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/somewhere/hub")
    msg = weights_missing_message(parse_spec("ViT-B-32/openai"))
    assert "Hugging Face cache, /somewhere/hub," in msg and "~/.cache/huggingface" not in msg
