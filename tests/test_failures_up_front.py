"""Failures a newcomer meets first are one line, at once, and say what to do (issue 20, item 6)."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import engine.model
from engine.cli import main
from engine.errors import WeightsMissing
from engine.model import loading, specs
from engine.model.origin import checkpoint_origin
from engine.pipeline.build import BuildParams, build_store
from engine.store import open_store

KEY = "sk-test-SECRET-0123456789"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    link = tmp_path_factory.mktemp("s") / "artifacts" / "t"
    link.parent.mkdir()
    build_store(BuildParams(model="tiny-test", images="synthetic:32", store=str(link),
                            random_weights=True, progress=False, layers="all"))  # fmt: skip
    return link


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a model is loaded or a text encoded."""

    def boom(*a, **kw):
        raise AssertionError("work started before the LLM check")

    monkeypatch.setattr(engine.model, "encode_text", boom)
    monkeypatch.setattr(engine.model, "load_model", boom)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """127.0.0.1 HTTP server answering every request with `code` (after `delay` seconds)."""

    def __init__(self, code: int, delay: float = 0.0):
        outer = self
        self.paths: list[str] = []

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self):
                outer.paths.append(self.path)
                time.sleep(delay)
                body = b'{"error": {"message": "nope"}}'
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _interpret_llm(store, capsys, *extra):
    """(exit code, stderr) of `interpret --labeller llm`. "At once" is what `no_work` proves:
    no model is loaded and no text encoded before the check fails (no wall-clock bounds)."""
    rc = main(["interpret", "--store", str(store), "--labeller", "llm", "--no-progress", *extra])
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and KEY not in err
    return lines[0]


@pytest.mark.slow
def test_llm_without_key_fails_before_any_work(store, monkeypatch, capsys, no_work):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rc, err = _interpret_llm(store, capsys)
    assert rc == 2
    assert "OPENAI_API_KEY" in _one_line(err)
    with open_store(store) as r:
        assert not r.interpreted


@pytest.mark.slow
def test_llm_unreachable_endpoint_fails_at_once(store, monkeypatch, capsys, no_work):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    rc, err = _interpret_llm(store, capsys)
    assert rc == 2
    assert _one_line(err) == f"error: cannot reach {url}; check OPENAI_BASE_URL and the network"


@pytest.mark.slow
def test_llm_rejected_key_and_silent_server(store, monkeypatch, capsys, no_work):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    bad = _Server(401)
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", bad.url)
        rc, err = _interpret_llm(store, capsys)
        assert rc == 2 and "rejected the API key (HTTP 401)" in _one_line(err)
        assert bad.paths == ["/v1/models"]  # one request, no retries, no labelling request
    finally:
        bad.close()
    silent = _Server(200, delay=3.0)
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", silent.url)
        rc, err = _interpret_llm(store, capsys, "--llm-timeout", "0.5")
        # the timeout given is the one used, for one request without retries
        assert rc == 2 and "did not answer within 0.5 s" in _one_line(err)
        assert silent.paths == ["/v1/models"]
    finally:
        silent.close()


@pytest.mark.unit
def test_llm_check_lets_a_server_without_a_model_list_through(monkeypatch):
    """Some OpenAI-compatible servers answer 404 on /models: they are there; go on."""
    from engine.pipeline.llm import check_endpoint

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    s = _Server(404)
    try:
        check_endpoint(s.url, timeout=2)
        assert s.paths == ["/v1/models"]
    finally:
        s.close()


@pytest.mark.unit
@pytest.mark.parametrize("spec", ["ViT-B-32/openai", "ViT-B-16/laion2b_s34b_b88k"])
def test_weights_missing_names_the_source_and_random_weights(spec, capsys):
    import open_clip

    arch, tag = spec.split("/")
    repo = open_clip.get_pretrained_cfg(arch, tag)["hf_hub"].rstrip("/")
    with pytest.raises(WeightsMissing) as e:
        loading.load_model(spec)
    msg = str(e.value)
    assert f"https://huggingface.co/{repo}" in msg and "open_clip_model.safetensors" in msg
    assert f"--model {spec} --random-weights" in msg and "\n" not in msg
    assert f"--model {arch}:/path/to/" in msg
    # through the CLI: one line, exit 2
    assert main(["verify", "--model", spec, "--images", "synthetic:2"]) == 2
    assert _one_line(capsys.readouterr().err).endswith(f"--model {spec} --random-weights")


@pytest.mark.unit
def test_checkpoint_origin_of_hub_specs_and_urls(monkeypatch):
    s = specs.parse_spec("hf-hub:org/repo")
    assert checkpoint_origin(s) == (
        "the Hugging Face hub, https://huggingface.co/org/repo "
        "(open_clip_config.json and open_clip_model.safetensors)"
    )
    monkeypatch.setattr(
        specs._open_clip(), "get_pretrained_cfg", lambda a, t: {"url": "https://x/y.pt"}
    )
    assert checkpoint_origin(specs.parse_spec("ViT-B-32/openai")) == "https://x/y.pt"
    assert checkpoint_origin(specs.parse_spec("tiny-test")) == ""
    with pytest.raises(WeightsMissing, match="local-dir:/path/to/folder.*--random-weights"):
        loading.load_model("hf-hub:org/repo")  # HF_HUB_OFFLINE (conftest): at once
