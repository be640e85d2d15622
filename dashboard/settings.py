"""Dashboard settings and paths: the repository root on sys.path, the artifacts folder, constants.

Every dashboard module imports this first: `streamlit run dashboard/Home.py` puts only
`dashboard/` on the path, and the engine lives at the repository root.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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
