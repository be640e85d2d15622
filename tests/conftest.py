"""Shared test setup: never touch the network for weights; keep torch to the machine's cores."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# interpret caches text-bank embeddings: tests never touch the user's cache (one per session)
os.environ.setdefault("CLIP_INTERPRET_CACHE", tempfile.mkdtemp(prefix="clip-interpret-tests-"))
