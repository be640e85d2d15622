"""A Streamlit server over the fixture store, started fresh for a test module, and helpers for
driving it in Debian's Chromium with Playwright."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.dashboard.conftest import ROOT, build_fixture

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RESULTS = ROOT / "test-results"


def need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: run scripts/setup_browser.sh")
        pytest.skip(f"{CHROMIUM} not installed (scripts/setup_browser.sh installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `streamlit run dashboard/Home.py`: its URL and process id."""

    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url, self.proc, self.log = url, proc, log

    def rss_mb(self) -> float:
        """The server process's resident memory now, MB (from /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def serve(tmp_path_factory, **env_extra: str):
    """A freshly started server over the fixture store (nothing opened in it yet)."""
    need_chromium()
    root, _, _ = build_fixture(tmp_path_factory.getbasetemp())
    port = _free_port()
    env = {**os.environ, "CLIP_INTERPRET_ARTIFACTS": str(root), "HF_HUB_OFFLINE": "1", **env_extra}
    env.pop("CLIP_INTERPRET_STORE", None)
    log_path = tmp_path_factory.mktemp("server") / "streamlit.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/Home.py",
         "--server.headless", "true", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail("streamlit did not start: " + log_path.read_text()[-2000:])
            time.sleep(0.3)
        yield Server(url, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


SETTLED = """() => !document.querySelector('[data-testid="stStatusWidget"]') &&
               !document.querySelector('[data-stale="true"]')"""
RESULTS_SHOWN = """(n) => document.querySelector('[data-testid="stException"]') ||
    [...document.querySelectorAll('[data-testid="stMain"] img')]
        .filter(i => i.complete && i.naturalWidth > 0).length >= n ||
    document.querySelector('[data-testid="stMain"] [data-testid="stDataFrame"]') ||
    document.querySelector('[data-testid="stMain"] [data-testid="stVegaLiteChart"]')"""
