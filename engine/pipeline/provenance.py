"""Provenance of every run: code version, host facts, timestamps."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import torch

import engine
from engine.store.schema import RunRecord


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


def run_record(kind: str, run_id: str, r, params: dict, timings: dict, started: str) -> RunRecord:
    """The `runs` row of a run over a store (`interpret`, `segeval`, `ablate`) read through `r`
    (a StoreReader or StoreSession: its model and metadata records)."""
    return RunRecord(
        run_id=run_id, kind=kind, model_spec=r.model_record.model_spec,
        weights_hash=r.model_record.weights_hash, code_version=code_version(),
        image_set_hash=r.meta.image_set_hash, parameters=params, timings=timings,
        started_at=str(started), finished_at=now(), host=socket.gethostname(),
    )  # fmt: skip
