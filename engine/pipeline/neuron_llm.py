"""The neurons' LLM labeller: one label per neuron from the texts most like the images that drive
it (`engine.core.neuron_labels`), with their weights, by in-context learning over the same
OpenAI-compatible chat API, key handling, cache and one-line errors as the heads' labeller
(`engine.pipeline.llm`). Five hand-labelled example neurons: engine/data/banks/
llm_neuron_examples.json."""

from __future__ import annotations

from tqdm import tqdm

from engine.core import labels
from engine.errors import UserError
from engine.sources import banks

SYSTEM = (
    "You label MLP neurons of a CLIP image encoder. Each neuron is described by the text "
    "descriptions most like the images that drive it, best first, each with its weight (the "
    "cosine between the text and the neuron's response; higher is closer). Answer with the "
    "single property the descriptions have in common, as one word or short phrase taken from "
    "this vocabulary when one fits: {vocabulary}. Answer with the label only."
)


def llm_labels(store_path, described, b, cache, model=None, timeout=30.0, retries=3,
               progress=True):  # fmt: skip
    """Relabel every described neuron (`LayerDescription`s, changed in place) through the chat
    API. Returns (labeller name `llm:MODEL`, new cache entries). On a failure the responses
    already paid for are kept in the store's `llm_cache` and the UserError is raised; no label is
    written."""
    from engine.pipeline.llm import DEFAULT_MODEL, LLMLabeller
    from engine.store import mutate_store

    model = model or DEFAULT_MODEL
    vocab = b.vocabulary or sorted(banks.load_bank("general").vocabulary)
    llm = LLMLabeller(model, vocab, banks.load_llm_neuron_examples(), cache=cache,
                      timeout=timeout, max_retries=retries, system=SYSTEM)  # fmt: skip
    work = [(d, j) for d in described for j in range(len(d.labels))]
    try:
        for d, j in tqdm(work, desc="LLM labels", unit="neuron", disable=not progress):
            idx, cos = d.response_idx[j], d.response_cos[j]
            if len(idx) == 0:
                d.labels[j] = labels.MIXED
                continue
            texts = banks.neuron_prompt_texts([b.texts[i] for i in idx], cos)
            d.labels[j] = llm.label(texts).label
    except UserError:
        if llm.new_entries:  # keep what was paid for; no labels are written
            with mutate_store(store_path) as w:
                w.add_llm_responses(llm.new_entries)
        raise
    return f"llm:{model}", list(llm.new_entries)
