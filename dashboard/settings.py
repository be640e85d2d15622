"""Dashboard constants and paths: the artifacts folder, the bundled samples, display sizes."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(__file__).resolve().parent / "samples"
BUILD_COMMANDS = (
    "make demo  # sets up .venv, builds artifacts/demo on first use, opens the dashboard",
    "python -m engine demo-store  # builds (and interprets) artifacts/demo",
)
DISPLAY_SIZE = 384  # side of the square crop the heatmaps are drawn on
OTHER_PATH = "another folder…"


def artifacts_root() -> Path:
    """Where stores are listed: $CLIP_INTERPRET_ARTIFACTS or <repo>/artifacts."""
    return Path(os.environ.get("CLIP_INTERPRET_ARTIFACTS", ROOT / "artifacts"))
