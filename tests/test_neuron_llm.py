"""The neurons' LLM labeller (`interpret --neurons --labeller llm`): the real `openai` client over
real HTTP against the local OpenAI-compatible server of test_llm; its prompt, cache, labeller
column and one-line failures that keep the store as it was."""

from __future__ import annotations

import numpy as np
import pytest

from engine import store
from engine.cli import main as cli_main
from engine.errors import UserError
from engine.pipeline import neuron_llm
from engine.pipeline.build import BuildParams, build_store
from engine.pipeline.llm import build_messages
from engine.pipeline.neuron_interpret import run_neuron_interpretation
from engine.sources import banks

pytestmark = pytest.mark.unit
N = 40


def fake_embeddings(s, texts):
    return np.random.default_rng(0).standard_normal((len(texts), 32)).astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    link = tmp_path_factory.mktemp("nllm") / "s"
    build_store(BuildParams(model="tiny-test", images=f"synthetic:{N}:5", store=str(link),
                            neurons="1-1", batch_size=20, progress=False))  # fmt: skip
    return link


def test_prompt_shows_five_example_neurons_and_the_texts_with_their_weights():
    examples = banks.load_llm_neuron_examples()
    assert len(examples) == 5 and all(len(t) >= 5 for t, _ in examples)
    texts = banks.neuron_prompt_texts(["a large object", "a small shape"], [0.4123, -0.05])
    assert texts == ["a large object (weight +0.41)", "a small shape (weight -0.05)"]
    msgs = build_messages(texts, ["size", "shape"], examples, neuron_llm.SYSTEM)
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * 5 + ["user"]
    assert "MLP neurons" in msgs[0]["content"] and "size, shape" in msgs[0]["content"]
    assert "(weight +0.41)" in msgs[-1]["content"] and "(weight" in msgs[1]["content"]
    heads = build_messages(texts, ["size"], banks.load_llm_examples())  # the heads' prompt stays
    assert "attention heads" in heads[0]["content"]


def test_llm_labels_every_neuron_caches_and_reruns_free(built, monkeypatch):
    from test_llm import KEY, FakeOpenAI

    server = FakeOpenAI()
    server.answer = "Colors."
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    try:
        res = run_neuron_interpretation(built, None, "general", top=5, n_words=3, progress=False,
                                        text_embeddings_fn=fake_embeddings, labeller="llm",
                                        llm_model="test-model")  # fmt: skip
    finally:
        server.close()
    assert res.labeller == "llm:test-model"
    with store.open_store(built) as r:
        stats = r.table("neuron_stats")
        cache = r.table("llm_cache")
        run = r.runs("interpret-neurons").iloc[-1]
    assert set(stats.labeller) == {"llm:test-model"} and set(stats.label) == {"colors"}
    n_prompts = len(server.requests)
    assert 1 <= n_prompts <= len(stats) and len(cache) == n_prompts  # one per distinct prompt
    asked = server.requests[0]["messages"]
    assert "MLP neurons" in asked[0]["content"] and "(weight +" in asked[-1]["content"]
    assert KEY not in str(run.to_dict())
    # a rerun answers from the stored cache: no key, no server
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setattr("engine.pipeline.llm.check_endpoint", lambda **kw: None)
    again = run_neuron_interpretation(built, None, "general", top=5, n_words=3, progress=False,
                                      text_embeddings_fn=fake_embeddings, labeller="llm",
                                      llm_model="test-model")  # fmt: skip
    assert again.labeller == "llm:test-model"


def test_llm_failures_are_one_line_and_keep_the_store(built, monkeypatch, capsys):
    from test_llm import KEY, FakeOpenAI

    with store.open_store(built) as r:
        before = r.version_path
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    argv = ["interpret", "--store", str(built), "--neurons", "all", "--labeller", "llm"]
    assert cli_main([*argv, "--no-progress"]) == 2  # no key: before any work
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and len(err.strip().splitlines()) == 1
    server = FakeOpenAI()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    server.script = ["good", "good", "401"]  # two answers paid for, then a rejected key
    try:
        with pytest.raises(UserError) as e:
            run_neuron_interpretation(built, None, "general", top=5, n_words=3, progress=False,
                                      text_embeddings_fn=fake_embeddings, labeller="llm",
                                      llm_model="other-model", llm_retries=0)  # fmt: skip
    finally:
        server.close()
    assert "401" in str(e.value) and KEY not in str(e.value) and "\n" not in str(e.value)
    with store.open_store(built) as r:
        stats = r.table("neuron_stats")
        cache = r.table("llm_cache")
    assert "llm:other-model" not in set(stats.labeller)  # no label written
    assert (cache.model == "other-model").sum() == 2  # what was paid for is kept
    with store.open_store(built) as r:
        assert r.version_path != before  # only through the cache's own write
