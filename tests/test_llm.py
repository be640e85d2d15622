"""LLM labeller: the real `openai` client over real HTTP against a local OpenAI-compatible server."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.errors import UserError
from engine.pipeline.llm import LLMLabeller, build_messages, prompt_hash
from engine.sources.banks import load_llm_examples

pytestmark = pytest.mark.unit
KEY = "sk-test-SECRET-0123456789abcdef"
VOCAB = ["colors", "counting", "locations", "texture"]


class FakeOpenAI:
    """A chat-completions server on 127.0.0.1. `script`: behaviours consumed one per request
    ("good", "429", "500", "garbage", "nochoices", "timeout", "401"); "good" once exhausted."""

    def __init__(self):
        self.script: list[str] = []
        self.answer = "Colors."
        self.requests: list[dict] = []
        self.auth: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def _send(self, code, body, headers=()):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                fake.requests.append(body)
                fake.auth.append(self.headers.get("Authorization", ""))
                what = fake.script.pop(0) if fake.script else "good"
                if what == "timeout":
                    time.sleep(1.0)
                    what = "good"
                if what == "429":
                    return self._send(
                        429, {"error": {"message": "slow down"}}, [("retry-after-ms", "10")]
                    )
                if what == "500":
                    return self._send(
                        500, {"error": {"message": "boom"}}, [("retry-after-ms", "10")]
                    )
                if what == "401":
                    msg = f"Incorrect API key provided: {self.headers.get('Authorization')}"
                    return self._send(401, {"error": {"message": msg, "code": "invalid_api_key"}})
                if what == "garbage":
                    return self._send(200, b"{this is not json")
                if what == "nochoices":
                    return self._send(200, {"id": "x", "object": "chat.completion", "choices": []})
                return self._send(
                    200,
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": fake.answer},
                            }
                        ],
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server(monkeypatch):
    s = FakeOpenAI()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", s.url)
    yield s
    s.close()


def labeller(**kw):
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout", 5.0)
    return LLMLabeller("test-model", VOCAB, load_llm_examples(), **kw)


TEXTS = ["A photo dominated by red", "A scene with blue tones", "Something pink in the frame"]


def test_prompt_has_five_examples_and_the_vocabulary():
    msgs = build_messages(TEXTS, VOCAB, load_llm_examples())
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * 5 + ["user"]
    assert "colors, counting, locations, texture" in msgs[0]["content"]
    assert all(t in msgs[-1]["content"] for t in TEXTS)
    assert prompt_hash(msgs, "a") != prompt_hash(msgs, "b")


def test_good_answer_mapped_and_cached(server):
    lab = labeller()
    out = lab.label(TEXTS)
    assert (out.label, out.in_vocabulary, out.cached) == ("colors", True, False)
    assert server.auth == [f"Bearer {KEY}"] and server.requests[0]["model"] == "test-model"
    assert server.requests[0]["temperature"] == 0
    assert len(lab.new_entries) == 1
    # a rerun with the stored cache costs nothing, even without a key or a server
    again = labeller(cache=dict(lab.cache))
    server.close()
    out2 = again.label(TEXTS)
    assert (out2.label, out2.cached) == ("colors", True) and again.new_entries == []
    assert len(server.requests) == 1


def test_free_answer_kept_as_new_label(server):
    server.answer = "Sunglasses and hats"
    out = labeller().label(TEXTS)
    assert (out.label, out.in_vocabulary) == ("sunglasses and hats", False)


def test_429_then_success(server):
    server.script = ["429", "429"]
    out = labeller().label(TEXTS)
    assert out.label == "colors" and len(server.requests) == 3


def test_500s_fail_clearly_after_retries(server):
    server.script = ["500"] * 10
    with pytest.raises(UserError, match="HTTP 500 after 2 retries"):
        labeller().label(TEXTS)
    assert len(server.requests) == 3


@pytest.mark.parametrize("what", ["garbage", "nochoices"])
def test_malformed_bodies(server, what):
    server.script = [what] * 5
    with pytest.raises(UserError, match="malformed"):
        labeller(max_retries=0).label(TEXTS)


def test_timeout_then_clear_failure(server):
    server.script = ["timeout"] * 5
    with pytest.raises(UserError, match=r"did not answer within 0.2 s \(1 retries\)"):
        labeller(timeout=0.2, max_retries=1).label(TEXTS)
    assert len(server.requests) == 2  # the timeout given, one retry, then the failure
    server.script = ["timeout"]  # one slow answer, then a retry succeeds
    assert labeller(timeout=0.2, max_retries=1).label(TEXTS).label == "colors"


def test_bad_key_one_line_and_never_shown(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.script = ["401"]
    with pytest.raises(UserError) as e:
        labeller().label(TEXTS)
    msg = str(e.value)
    assert "rejected the API key (HTTP 401)" in msg and "\n" not in msg
    assert KEY not in msg and KEY not in caplog.text
    assert len(server.requests) == 1  # 401 is not retried
    labeller().label(TEXTS)  # a good call, logged at DEBUG: the key still never appears
    assert KEY not in caplog.text


def test_missing_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        labeller().label(TEXTS)


def test_check_and_labeller_share_one_client_and_one_error_mapping(monkeypatch):
    """The up-front check and the labelling requests resolve the key and the endpoint the same
    way and say the same thing about the same failure."""
    import socket

    from engine.pipeline.llm import check_endpoint

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(UserError) as checked:
        check_endpoint(timeout=2)
    with pytest.raises(UserError) as asked:
        labeller(max_retries=0).label(TEXTS)
    assert str(checked.value) == str(asked.value)
    assert str(asked.value) == f"cannot reach {url}; check OPENAI_BASE_URL and the network"
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(UserError) as checked:
        check_endpoint()
    with pytest.raises(UserError) as asked:
        labeller().label(TEXTS)
    assert str(checked.value) == str(asked.value) and "OPENAI_API_KEY" in str(asked.value)
