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
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from engine.core import groundtruth, labels, scores, textspan
from engine.core.layers import parse_layers
from engine.errors import UserError
from engine.pipeline import provenance
from engine.sources import banks, reference


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


def _seed(weights_hash: str) -> int:
    if str(weights_hash).startswith("random:seed"):
        try:
            return int(str(weights_hash)[len("random:seed") :])
        except ValueError:
            return 0
    return 0


def text_embeddings(info: dict, texts: list[str], progress: bool = False) -> np.ndarray:
    """The bank embedded by the store's own model: [text, d_embed] fp32, unit rows."""
    from engine.model import encode_text, load_model

    random_weights = bool(info.get("random_weights", False))
    lm = load_model(
        info["model_spec"], random_weights=random_weights, seed=_seed(info.get("weights_hash", ""))
    )
    stored_hash = info.get("weights_hash")
    if stored_hash and stored_hash != "unknown" and lm.weights_hash not in (stored_hash, "unknown"):
        raise UserError(
            f"the weights of {info['model_spec']} changed since the store was built "
            f"({lm.weights_hash[:12]} != {str(stored_hash)[:12]}); rebuild the store"
        )
    batch = 256
    parts = [
        encode_text(lm, texts[i : i + batch]).numpy()  # [text, d_embed]
        for i in tqdm(
            range(0, len(texts), batch), desc="encode bank", unit="batch", disable=not progress
        )
    ]
    r = np.concatenate(parts).astype(np.float32)  # [text, d_embed]
    if r.shape[1] != int(info.get("d_embed", r.shape[1])):
        raise UserError(f"text d_embed {r.shape[1]} differs from the store's {info['d_embed']}")
    return r


def _votes(cats: list[str], weights: np.ndarray, k: int = labels.TOP_K) -> dict[str, float]:
    """Share of the top-k removed variance per category (what the offline labeller weighs)."""
    w = np.clip(np.asarray(weights[:k], dtype=np.float64), 0, None)
    tot = float(w.sum()) or 1.0
    out: dict[str, float] = {}
    for c, wi in zip(cats[:k], w, strict=True):
        out[c] = round(out.get(c, 0.0) + float(wi) / tot, 6)
    return out


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
) -> InterpretResult:
    """Interpret every head of the chosen layers and write the results into the store.

    `text_embeddings_fn(info, texts) -> [text, d_embed]` replaces the store's model (tests).
    """
    from engine.store import mutate_store, open_store

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
    t0 = time.perf_counter()
    started = pd.Timestamp.now(tz="UTC").tz_localize(None)
    run_id = uuid.uuid4().hex
    timings: dict[str, float] = {}
    with open_store(store_path) as r:
        version = r.version_path  # results are written against this version only
        info = dict(r.info)
        chosen = parse_layers(layers, int(info["n_layers"]), available=r.layers)
        n_heads = int(info["n_heads"])
        factors = r.factors()
        bank_spec = bank or ("world" if factors is not None else "general")
        b = banks.load_bank(bank_spec)
        cache = {}
        if labeller == "llm":
            cached = r.query("SELECT prompt_hash, response FROM llm_cache")
            cache = dict(zip(cached["prompt_hash"], cached["response"], strict=True))
        t = time.perf_counter()
        if text_embeddings_fn is None:
            emb = text_embeddings(info, b.texts, progress=progress)  # [text, d_embed]
        else:
            emb = text_embeddings_fn(info, b.texts)
        timings["encode_texts_s"] = round(time.perf_counter() - t, 3)
        heads = [(lay, h) for lay in chosen for h in range(n_heads)]
        spans: dict[tuple[int, int], textspan.TextSpanResult] = {}
        eta: dict[tuple[int, int], np.ndarray] = {}
        t = time.perf_counter()
        bar = tqdm(heads, desc="TextSpan", unit="head", disable=not progress)
        for lay, h in bar:
            # each head once, in its own coordinates [image, d_head] (read around the reader's
            # cache: a pass over every head would only evict); the bank is projected onto the
            # head's basis once, [text, d_head]: same picks and shares as on [image, d_embed]
            c = r.coords(lay, h, cache=False)  # [image, d_head] fp32
            bank_c = textspan.project_bank(emb, r.basis(lay, h))  # [text, d_head]
            spans[(lay, h)] = textspan.textspan(c, bank_c, rank=rank, n_texts=texts_per_head)
            if factors is not None:
                eta[(lay, h)] = groundtruth.head_eta2(c, factors[1])  # [factor], basis-invariant
        timings["textspan_s"] = round(time.perf_counter() - t, 3)

    # ---- labels
    t = time.perf_counter()
    head_labels: dict[tuple[int, int], str] = {}
    votes: dict[tuple[int, int], dict] = {}
    top_cats: dict[tuple[int, int], list[str]] = {}
    for key in heads:
        res = spans[key]
        top_cats[key] = [b.categories[i] for i in res.indices]
    if labeller == "offline":
        labeller_name = "offline"
        for key in heads:
            res = spans[key]
            head_labels[key] = labels.offline_label(top_cats[key], res.variance_removed)
            votes[key] = _votes(top_cats[key], res.variance_removed)
    else:
        from engine.pipeline.llm import DEFAULT_MODEL, LLMLabeller

        model = llm_model or DEFAULT_MODEL
        labeller_name = f"llm:{model}"
        vocab = b.vocabulary or sorted(banks.load_bank("general").vocabulary)
        llm = LLMLabeller(
            model, vocab, banks.load_llm_examples(), cache=cache,
            timeout=llm_timeout, max_retries=llm_retries,
        )  # fmt: skip
        try:
            for key in tqdm(heads, desc="LLM labels", unit="head", disable=not progress):
                res = spans[key]
                if len(res) == 0:
                    head_labels[key], votes[key] = labels.MIXED, {"response": None}
                    continue
                out = llm.label([b.texts[i] for i in res.indices])
                head_labels[key] = out.label
                votes[key] = {"response": out.response, "in_vocabulary": out.in_vocabulary}
        except UserError:
            if llm.new_entries:  # keep what was paid for; no labels are written
                with mutate_store(store_path) as con:
                    _insert_cache(con, llm.new_entries)
            raise
    timings["label_s"] = round(time.perf_counter() - t, 3)

    # ---- scores and ground truth
    layer_of = [lay for lay, _ in heads]
    rows = scores.score_rows(
        layer_of, [head_labels[k] for k in heads], [top_cats[k] for k in heads],
        normalise=labels.NORMALISATIONS[normalise],
    )  # fmt: skip
    gt_rows, clear, matched, comparable = [], 0, 0, True
    if factors is not None:
        names = factors[0]
        # labels from a bank whose categories are not the factor names cannot match (NULL)
        comparable = set(names) <= set(b.vocabulary)
        for key in heads:
            truth = groundtruth.dominant_factor(eta[key], names)
            lab = head_labels[key]
            for name, e in zip(names, eta[key], strict=True):
                dom = name == truth.factor
                match = (dom and groundtruth.label_matches(lab, name)) if comparable else None
                gt_rows.append((*key, name, float(e), dom, lab, match))
            if truth.is_dominant:
                clear += 1
                matched += comparable and groundtruth.label_matches(lab, truth.factor)
    timings["total_s"] = round(time.perf_counter() - t0, 3)

    # ---- write, replacing the previous interpretation
    ts_df = pd.DataFrame(
        [
            (lay, h, k, b.texts[i], b.categories[i], float(v), float(sv), b.name, run_id)
            for (lay, h) in heads
            for k, (i, v, sv) in enumerate(
                zip(
                    spans[(lay, h)].indices,
                    spans[(lay, h)].variance_removed,
                    spans[(lay, h)].score_var,
                    strict=True,
                )
            )
        ],
        columns=[
            "layer", "head", "rank", "text", "category", "variance_removed", "score_var",
            "bank", "run_id",
        ],
    )  # fmt: skip
    hl_df = pd.DataFrame(
        [(lay, h, head_labels[(lay, h)], labeller_name, json.dumps(votes[(lay, h)]), run_id)
         for lay, h in heads],
        columns=["layer", "head", "label", "labeller", "votes", "run_id"],
    )  # fmt: skip
    sc_df = pd.DataFrame(
        [(s.metric, s.scope, s.layer_from, s.layer_to, s.count, s.total, s.value,
          labeller_name, run_id) for s in rows],
        columns=["metric", "scope", "layer_from", "layer_to", "count", "total", "value",
                 "labeller", "run_id"],
    )  # fmt: skip
    gt_df = pd.DataFrame(
        [(*g, run_id) for g in gt_rows],
        columns=["layer", "head", "factor", "eta2", "is_dominant", "label", "match", "run_id"],
    )
    params = {
        "labeller": labeller_name, "bank": b.name, "n_texts_bank": len(b), "layers": chosen,
        "texts_per_head": texts_per_head, "rank": rank, "normalise": normalise,
    }  # fmt: skip
    with mutate_store(store_path, expect_version=version) as con:
        for table in ("textspan", "head_labels", "scores", "ground_truth"):
            con.execute(f"DELETE FROM {table}")
        for table, df in (
            ("textspan", ts_df), ("head_labels", hl_df), ("scores", sc_df), ("ground_truth", gt_df)
        ):  # fmt: skip
            if len(df):
                con.register("_df", df)
                con.execute(f"INSERT INTO {table} ({', '.join(df.columns)}) SELECT * FROM _df")
                con.unregister("_df")
        if labeller == "llm":
            _insert_cache(con, llm.new_entries)
        provenance.insert_run(con, "interpret", run_id, info, params, timings, started)
        con.execute(
            "INSERT OR REPLACE INTO store_meta VALUES ('interpretation', ?)",
            [json.dumps({"run_id": run_id, **params})],
        )
    return InterpretResult(
        run_id, labeller_name, b.name, chosen, len(heads), rows, clear, matched, comparable,
        timings,
    )  # fmt: skip


def _insert_cache(con, entries: list[tuple[str, str, str]]) -> None:
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    for h, model, response in entries:
        con.execute(
            "INSERT OR REPLACE INTO llm_cache VALUES (?, ?, ?, ?)", [h, model, response, now]
        )


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
