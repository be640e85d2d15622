"""Interpretation over a store: TextSpan per head, labels, scores, ground truth -> the store's DuckDB.

`run_interpretation` reads every chosen head from the store (in its own coordinates), describes it with TextSpan over a
description bank embedded by the store's own model, labels it (offline or LLM), scores the labels
and, for demo-world stores, compares them with the ground truth (η² per factor). Everything is
written in one `mutate_store` transaction that replaces the previous interpretation, so a failed
run leaves the store as it was (only new LLM responses are kept, in `llm_cache`, so a retry does
not pay for them twice).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from engine.core import groundtruth, labels, scores, textspan
from engine.core.layers import parse_layers
from engine.errors import UserError
from engine.pipeline import provenance
from engine.pipeline import units as unit_pages
from engine.session import StoreSession
from engine.sources import banks, reference
from engine.store import mutate_store


@dataclass
class InterpretResult:
    run_id: str
    labeller: str
    bank: str
    layers: list[int]
    n_heads: int
    scores: list[scores.ScoreRow]
    clear_heads: int = 0  # demo stores: heads with a clear dominant factor
    matched_heads: int = 0  # ... of which labelled with that factor
    comparable: bool = True  # the bank's categories name the world factors (else no match)
    timings: dict = field(default_factory=dict)

    @property
    def match_rate(self) -> float:
        return self.matched_heads / self.clear_heads if self.clear_heads else float("nan")


def _votes(cats: list[str], weights: np.ndarray, k: int = labels.TOP_K) -> dict[str, float]:
    """Share of the top-k removed variance per category (what the offline labeller weighs)."""
    w = np.clip(np.asarray(weights[:k], dtype=np.float64), 0, None)
    tot = float(w.sum()) or 1.0
    out: dict[str, float] = {}
    for c, wi in zip(cats[:k], w, strict=True):
        out[c] = round(out.get(c, 0.0) + float(wi) / tot, 6)
    return out


Head = tuple[int, int]


@dataclass
class _Described:
    """What was read and computed per head before labelling."""

    heads: list[Head]
    spans: dict[Head, textspan.TextSpanResult]
    eta: dict[Head, np.ndarray]  # [factor] η² per head (demo-world stores)
    top_cats: dict[Head, list[str]]


@dataclass
class _Labels:
    name: str  # offline | llm:MODEL
    labels: dict[Head, str]
    votes: dict[Head, dict]
    new_llm_entries: list = field(default_factory=list)


@dataclass
class _GroundTruth:
    rows: list[tuple]
    clear: int = 0
    matched: int = 0
    comparable: bool = True


def run_interpretation(
    store_path,
    labeller: str = "offline",
    bank: str | None = None,
    *,
    texts_per_head: int = textspan.DEFAULT_TEXTS,
    rank: int = textspan.DEFAULT_RANK,
    layers: str | None = None,
    llm_model: str | None = None,
    llm_timeout: float = 30.0,
    llm_retries: int = 3,
    normalise: str = labels.DEFAULT_NORMALISATION,
    progress: bool = True,
    text_embeddings_fn=None,
    unit_k: int = unit_pages.units.DEFAULT_K,
    unit_maps: bool = True,
) -> InterpretResult:
    """Interpret every head of the chosen layers and write the results into the store.

    read (bank embedded by the store's verified model) -> TextSpan per head -> labels -> scores
    and ground truth -> one write. `text_embeddings_fn(session, texts) -> [text, d_embed]`
    replaces the store's model (tests)."""
    _check_choices(labeller, normalise, texts_per_head, rank)
    _check_llm(labeller, llm_timeout)
    t0 = time.perf_counter()
    started = provenance.now()
    run_id = uuid.uuid4().hex
    timings: dict[str, float] = {}
    with StoreSession.open(store_path) as s:
        chosen = parse_layers(layers, s.model_record.n_layers, available=s.layers)
        factors = s.reader.factors()
        b = banks.load_bank(bank or ("world" if factors is not None else "general"))
        with _timed(timings, "encode_texts_s"):
            if text_embeddings_fn is None:  # from the on-disk text cache after the first run
                emb, timings["texts_encoded"] = _bank_embeddings(s, b, progress)
            else:
                emb = text_embeddings_fn(s, b.texts)  # [text, d_embed]
        unit_pre = unit_pages.UnitPrecompute(s, k=unit_k, maps=unit_maps, bank=(b.texts, emb))
        with _timed(timings, "textspan_s"):
            described = _describe(s, chosen, emb, b, factors, rank, texts_per_head, progress,
                                  unit_pre)  # fmt: skip
        unit_pre.compute_maps(progress)  # the unit pages' maps: the model on 2k images per head
        timings.update(unit_pre.timings)
        cache = s.reader.llm_responses() if labeller == "llm" else {}
        with _timed(timings, "label_s"):
            lab = _label(store_path, labeller, described, b, cache, llm_model, llm_timeout,
                         llm_retries, progress)  # fmt: skip
        rows = scores.score_rows(
            [l for l, _ in described.heads], [lab.labels[k] for k in described.heads],
            [described.top_cats[k] for k in described.heads],
            normalise=labels.NORMALISATIONS[normalise],
        )  # fmt: skip
        gt = _ground_truth(described, lab.labels, factors, b)
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        params = {
            "labeller": lab.name, "bank": b.name, "n_texts_bank": len(b), "layers": chosen,
            "texts_per_head": texts_per_head, "rank": rank, "normalise": normalise,
        }  # fmt: skip
        tables = _tables(run_id, described, lab, rows, gt, b)
        run = provenance.run_record("interpret", run_id, s, params, timings, started)
        with mutate_store(store_path, expect_version=s.version_path) as w:
            w.replace_interpretation(tables)
            unit_pre.write(w, run_id)
            w.add_llm_responses(lab.new_llm_entries)
            w.record_run(run)
            w.set_interpretation({"run_id": run_id, **params})
    return InterpretResult(
        run_id, lab.name, b.name, chosen, len(described.heads), rows, gt.clear, gt.matched,
        gt.comparable, timings,
    )  # fmt: skip


def _check_choices(labeller: str, normalise: str, texts_per_head: int, rank: int) -> None:
    if labeller not in labels.LABELLERS:
        raise UserError(f"unknown labeller {labeller!r}; use one of {', '.join(labels.LABELLERS)}")
    if normalise not in labels.NORMALISATIONS:
        raise UserError(
            f"unknown normalisation {normalise!r}; use {', '.join(labels.NORMALISATIONS)}"
        )
    if texts_per_head < 1:
        raise UserError("--texts-per-head must be at least 1")
    if rank < 1:
        raise UserError("--rank must be at least 1")


def _check_llm(labeller: str, timeout: float) -> None:
    """--labeller llm: the key and the endpoint first, failing in seconds before any work."""
    if labeller == "llm":
        from engine.pipeline.llm import check_endpoint

        check_endpoint(timeout=min(timeout, 10.0))


def _bank_embeddings(s, b, progress: bool) -> tuple[np.ndarray, int]:
    """The bank's [text, d_embed] embeddings from the text cache (engine.model.text_cache), else
    encoded by the session's verified model, announced first and then cached; and how many texts
    were encoded (0 on a cache hit)."""
    from engine.model import text_cache

    got = text_cache.bank_embeddings(
        asdict(s.model_record), b.texts, lambda t: s.text_embeddings(t, progress=progress),
        name=f"bank {b.name}", announce=lambda line: print(line, file=sys.stderr, flush=True),
        prepare=s.model,  # the verified model first: a refusal is the only line printed
    )  # fmt: skip
    return got.emb, got.n_encoded


@contextmanager
def _timed(timings: dict, key: str):
    t = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - t, 3)


def _describe(s, chosen, emb, b, factors, rank, texts_per_head, progress,
              unit_pre=None) -> _Described:  # fmt: skip
    """TextSpan (and η² against the world's factors) for every head of the chosen layers."""
    heads = [hd for hd in s.heads() if hd[0] in chosen]
    spans: dict[Head, textspan.TextSpanResult] = {}
    eta: dict[Head, np.ndarray] = {}
    for lay, h in tqdm(heads, desc="TextSpan", unit="head", disable=not progress):
        # each head once, in its own coordinates [image, d_head] (read around the reader's
        # cache: a pass over every head would only evict); the bank is projected onto the
        # head's basis once, [text, d_head]: same picks and shares as on [image, d_embed]
        c = s.reader.coords(lay, h, cache=False)  # [image, d_head] fp32
        bank_c = textspan.project_bank(emb, s.reader.basis(lay, h))  # [text, d_head]
        mom = textspan.head_moments(c)  # shared by TextSpan and the unit pages
        spans[(lay, h)] = textspan.textspan_from_moments(
            *mom, bank_c, rank=rank, n_texts=texts_per_head
        )
        if unit_pre is not None:
            unit_pre.add(lay, h, c, s.reader.basis(lay, h), moments=mom)
        if factors is not None:
            eta[(lay, h)] = groundtruth.head_eta2(c, factors[1])  # [factor], basis-invariant
    top_cats = {k: [b.categories[i] for i in spans[k].indices] for k in heads}
    return _Described(heads, spans, eta, top_cats)


def _label(store_path, labeller, d: _Described, b, cache, llm_model, timeout, retries,
           progress) -> _Labels:  # fmt: skip
    if labeller == "offline":
        return _Labels(
            "offline",
            {k: labels.offline_label(d.top_cats[k], d.spans[k].variance_removed) for k in d.heads},
            {k: _votes(d.top_cats[k], d.spans[k].variance_removed) for k in d.heads},
        )
    return _llm_labels(store_path, d, b, cache, llm_model, timeout, retries, progress)


def _llm_labels(store_path, d: _Described, b, cache, llm_model, timeout, retries,
                progress) -> _Labels:  # fmt: skip
    from engine.pipeline.llm import DEFAULT_MODEL, LLMLabeller

    model = llm_model or DEFAULT_MODEL
    vocab = b.vocabulary or sorted(banks.load_bank("general").vocabulary)
    llm = LLMLabeller(model, vocab, banks.load_llm_examples(), cache=cache,
                      timeout=timeout, max_retries=retries)  # fmt: skip
    out = _Labels(f"llm:{model}", {}, {})
    try:
        for key in tqdm(d.heads, desc="LLM labels", unit="head", disable=not progress):
            res = d.spans[key]
            if len(res) == 0:
                out.labels[key], out.votes[key] = labels.MIXED, {"response": None}
                continue
            got = llm.label([b.texts[i] for i in res.indices])
            out.labels[key] = got.label
            out.votes[key] = {"response": got.response, "in_vocabulary": got.in_vocabulary}
    except UserError:
        if llm.new_entries:  # keep what was paid for; no labels are written
            with mutate_store(store_path) as w:
                w.add_llm_responses(llm.new_entries)
        raise
    out.new_llm_entries = list(llm.new_entries)
    return out


def _ground_truth(d: _Described, head_labels: dict, factors, b) -> _GroundTruth:
    """Demo-world stores: each head's dominant factor (η²) against its label."""
    if factors is None:
        return _GroundTruth([])
    names = factors[0]
    # labels from a bank whose categories are not the factor names cannot match (NULL)
    gt = _GroundTruth([], comparable=set(names) <= set(b.vocabulary))
    for key in d.heads:
        truth = groundtruth.dominant_factor(d.eta[key], names)
        lab = head_labels[key]
        for name, e in zip(names, d.eta[key], strict=True):
            dom = name == truth.factor
            match = (dom and groundtruth.label_matches(lab, name)) if gt.comparable else None
            gt.rows.append((*key, name, float(e), dom, lab, match))
        if truth.is_dominant:
            gt.clear += 1
            gt.matched += gt.comparable and groundtruth.label_matches(lab, truth.factor)
    return gt


def _tables(run_id, d: _Described, lab: _Labels, rows, gt: _GroundTruth, b) -> dict:
    """The interpretation tables' rows (schema.INTERPRETATION_TABLES), by column name."""
    textspan_rows = [
        {"layer": lay, "head": h, "rank": k, "text": b.texts[i], "category": b.categories[i],
         "variance_removed": float(v), "score_var": float(sv), "bank": b.name, "run_id": run_id}
        for (lay, h) in d.heads
        for k, (i, v, sv) in enumerate(zip(d.spans[(lay, h)].indices,
                                           d.spans[(lay, h)].variance_removed,
                                           d.spans[(lay, h)].score_var, strict=True))
    ]  # fmt: skip
    label_rows = [
        {"layer": lay, "head": h, "label": lab.labels[(lay, h)], "labeller": lab.name,
         "votes": json.dumps(lab.votes[(lay, h)]), "run_id": run_id}
        for lay, h in d.heads
    ]  # fmt: skip
    score_rows = [{**asdict(r), "labeller": lab.name, "run_id": run_id} for r in rows]
    gt_cols = ["layer", "head", "factor", "eta2", "is_dominant", "label", "match"]
    gt_rows = [{**dict(zip(gt_cols, g, strict=True)), "run_id": run_id} for g in gt.rows]
    return {
        "textspan": pd.DataFrame(textspan_rows),
        "head_labels": pd.DataFrame(label_rows),
        "scores": pd.DataFrame(score_rows),
        "ground_truth": pd.DataFrame(gt_rows),
    }


# ---- the published labels of the paper's six models


def reference_score_table(normalisation: str = labels.DEFAULT_NORMALISATION) -> pd.DataFrame:
    """Entanglement of the six paper models from their published labels, one row per model.

    Columns: model, pretrained, heads, shared, unique (counts under `normalisation`), paper
    (the paper's Table 1 count).
    """
    norm = labels.NORMALISATIONS[normalisation]
    out = []
    for m in reference.paper_models():
        lab = reference.reference_labels(m.arch, m.pretrained)["label"].tolist()
        out.append(
            {
                "model": m.arch,
                "pretrained": m.pretrained,
                "heads": len(lab),
                "shared": scores.entanglement_shared(lab, norm).count,
                "unique": scores.entanglement_unique(lab, norm).count,
                "paper": m.entanglement_heads,
            }
        )
    return pd.DataFrame(out)


def reference_markdown_table() -> str:
    """docs/interpretation.md's table: unique / shared counts under each normalisation."""
    tabs = {k: reference_score_table(k) for k in labels.NORMALISATIONS}
    head = " | ".join(f"unique / shared ({k})" for k in labels.NORMALISATIONS)
    lines = [
        f"| model | heads | paper Table 1 | {head} |",
        "|---|---|---|" + "---|" * len(tabs),
    ]
    base = tabs["none"]
    for i, row in base.iterrows():
        cells = " | ".join(f"{t.loc[i, 'unique']} / {t.loc[i, 'shared']}" for t in tabs.values())
        lines.append(
            f"| {row['model']} {row['pretrained']} | {row['heads']} | {row['paper']} | {cells} |"
        )
    return "\n".join(lines)
