"""CLIP-InterpreT dashboard: `streamlit run dashboard/Home.py` (from the repository root).

Streamlit runs this file as a script with only `dashboard/` on `sys.path`; the one bootstrap
below puts the repository root there instead, so the dashboard is the package `dashboard` and
the engine is importable. Everything else is in `dashboard.app`.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from dashboard.app import main  # noqa: E402

main()
