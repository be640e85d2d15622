"""Shared test setup: never touch the network for weights; keep torch to the machine's cores."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# interpret caches text-bank embeddings: tests never touch the user's cache (one per session,
# removed when the session ends)
if not os.environ.get("CLIP_INTERPRET_CACHE"):
    _cache = tempfile.mkdtemp(prefix="clip-interpret-tests-")
    os.environ["CLIP_INTERPRET_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


@pytest.fixture
def few_architectures(monkeypatch):
    """`discovery.list_architectures` answering a small fixed list at once (the real scan builds
    every open_clip architecture, about a minute; tests/test_discovery.py covers it, slow)."""
    from engine.model import discovery
    from engine.model.discovery import Architecture

    fixed = (
        Architecture("ViT-B-32", True),
        Architecture("ViT-B-16", True),
        Architecture("ViT-B-16-SigLIP", True, stores=False),
        Architecture("RN50", False, "ResNet image tower, not a ViT"),
    )
    monkeypatch.setattr(discovery, "list_architectures", lambda: fixed)
    return fixed


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache: "no weights on this machine" whatever this machine's
    own cache holds."""
    from huggingface_hub import constants

    hub = tmp_path / "hf-hub"
    hub.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return hub
