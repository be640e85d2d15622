"""Provenance of every run: code version, host facts, timestamps."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch

import engine


def code_version() -> str:
    """engine.__version__ plus the git commit of the checkout, when there is one."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{engine.__version__}+g{commit}" if commit else engine.__version__


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def env_info() -> dict:
    """Host facts for benchmark records."""
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "torch": torch.__version__}


def insert_run(
    con, kind: str, run_id: str, info: dict, params: dict, timings: dict, started
) -> None:
    """Record a run over a store (`interpret`, `segeval`, `ablate`) in its `runs` table."""
    con.execute(
        "INSERT INTO runs (run_id, kind, model_spec, weights_hash, code_version, image_set_hash, "
        "parameters, timings, started_at, finished_at, skipped_files, host) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]', ?)",
        [
            run_id, kind, info.get("model_spec"), info.get("weights_hash"), code_version(),
            info.get("image_set_hash"), json.dumps(params), json.dumps(timings),
            started, pd.Timestamp(now()), socket.gethostname(),
        ],
    )  # fmt: skip
