"""`interpret --neurons SPEC`: describe every neuron of the chosen built layers -> DuckDB.

Per neuron layer (math in `engine.core.neuron_analysis`): two streamed passes over the stored
frame coordinates (mean; centred norms, top images, η² sums), the first principal direction of the
top images (sign fixed), OMP words over the bank embedded by the store's own model (what the
neuron writes), a label of what it responds to (`engine.core.neuron_labels`: its effect's
covariance with the image embedding, a third read of a few thousand images; offline or LLM), and
for demo-world stores η² per factor. Written in one `mutate_store` transaction replacing the chosen
layers' rows of `neuron_stats`, `neuron_words`, `neuron_ground_truth`; the heads' interpretation is
untouched.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from engine.core import groundtruth, labels, neuron_labels
from engine.core import neuron_analysis as na
from engine.errors import UserError
from engine.pipeline import provenance
from engine.pipeline.neurons import StoredNeurons
from engine.sources import banks

FRAME_BLOCK = 256  # neurons whose frames Q_n [K, d_embed] are formed at once


@dataclass
class NeuronInterpretResult:
    run_id: str
    layers: list[int]
    n_neurons: int
    bank: str
    timings: dict = field(default_factory=dict)
    clear: int = 0  # demo stores: neurons with η² >= 0.5 for one factor
    matched: int = 0  # ... labelled with that factor
    labeller: str = "offline"  # offline | llm:MODEL

    @property
    def match_rate(self) -> float:
        return self.matched / self.clear if self.clear else float("nan")


@dataclass
class LayerDescription:
    layer: int
    stats: na.NeuronStats
    directions: np.ndarray  # [neuron, d_embed] unit
    coef: np.ndarray  # [neuron, text] sparse OMP codes
    labels: list[str]
    eta2: np.ndarray | None  # [factor, neuron]
    response_idx: np.ndarray | None = None  # [neuron, text] best response texts (bank indices)
    response_cos: np.ndarray | None = None  # [neuron, text] their cosines


def describe_layer(
    sn: StoredNeurons,
    layer: int,
    atoms: np.ndarray,
    categories: list[str],
    *,
    codes: np.ndarray | None = None,
    n_values: list[int] | None = None,
    top: int = na.TOP_IMAGES,
    n_words: int = na.N_WORDS,
    progress: bool = False,
    on_norms=None,
) -> LayerDescription:
    """One neuron layer described (no writes). atoms: [text, d_embed] (`text_dictionary`);
    codes: [image, factor] demo-world factor codes or None; on_norms(layer, norms [image,
    neuron]): a per-chunk hook given the second pass's centred effect norms (unit pages)."""
    n = int(sn.r.info["n_images"])
    step = int(sn.r.info.get("image_chunk") or 1024)
    st = na.NeuronStats(sn.n_neurons, sn.n_paths(layer), min(top, n), n_values or [])
    chunks = list(range(0, n, step))
    for a in tqdm(chunks, desc=f"L{layer} mean", disable=not progress):
        b = min(n, a + step)
        cs = None if codes is None else [codes[a:b, f] for f in range(codes.shape[1])]
        st.update_mean(*sn.q(layer, a, b), cs)
    for a in tqdm(chunks, desc=f"L{layer} top", disable=not progress):
        norms = st.update_top(*sn.q(layer, a, min(n, a + step)), a)
        if on_norms is not None:
            on_norms(layer, norms)
    st.finish()
    v = na.principal_directions(st.top_k)  # [neuron, K]
    directions = np.zeros((sn.n_neurons, atoms.shape[1]), np.float32)
    for s in range(0, sn.n_neurons, FRAME_BLOCK):
        idx = range(s, min(sn.n_neurons, s + FRAME_BLOCK))
        directions[s : s + len(idx)] = sn.directions(layer, v[s : s + len(idx)], idx)
    coef = na.sparse_text(directions, atoms, n_words)  # [neuron, text]
    # the label: what the neuron responds to (engine.core.neuron_labels), not the OMP words
    resp = neuron_labels.ResponseMoments(v, atoms.shape[1])
    for a, b in neuron_labels.response_blocks(n, step):
        resp.update(*sn.q(layer, a, b), sn.r.lazy("output")[a:b])
    r_idx, r_cos = neuron_labels.response_texts(resp.response(), atoms)
    labs = neuron_labels.response_labels(r_idx, r_cos, categories)
    eta = st.eta2() if codes is not None else None
    return LayerDescription(layer, st, directions, coef, labs, eta, r_idx, r_cos)


def run_neuron_interpretation(
    store_path,
    neurons: str | None = None,
    bank: str | None = None,
    *,
    top: int = na.TOP_IMAGES,
    n_words: int = na.N_WORDS,
    progress: bool = True,
    text_embeddings_fn=None,
    unit_k: int = 16,
    unit_map_neurons: int | None = None,
    labeller: str = "offline",
    llm_model: str | None = None,
    llm_timeout: float = 30.0,
    llm_retries: int = 3,
) -> NeuronInterpretResult:
    """Describe the neurons of `neurons` (default: every built neuron layer) into the store,
    labelled by `labeller` (offline | llm: `engine.pipeline.neuron_llm`, same flags and
    environment as the heads'). `text_embeddings_fn(session, texts) -> [text, d_embed]` replaces
    the store's model (tests). The neurons' unit pages ride along (`engine.pipeline.neuron_units`:
    `unit_k` images per side, maps for the `unit_map_neurons` most significant; default its
    MAP_NEURONS)."""
    from engine.pipeline.neuron_units import MAP_NEURONS, NeuronUnitPrecompute
    from engine.session import StoreSession
    from engine.store import mutate_store

    if top < 1 or n_words < 1:
        raise UserError("--top-images and --words must be at least 1")
    if labeller not in labels.LABELLERS:
        raise UserError(f"unknown labeller {labeller!r}; use one of {', '.join(labels.LABELLERS)}")
    if labeller == "llm":  # the key and the endpoint first, failing in seconds before any work
        from engine.pipeline.llm import check_endpoint

        check_endpoint(timeout=min(llm_timeout, 10.0))
    t0 = time.perf_counter()
    started = provenance.now()
    run_id = uuid.uuid4().hex
    timings: dict[str, float] = {}
    with StoreSession.open(store_path) as s:
        sn = StoredNeurons(s.reader, neurons)
        n_neurons, chosen = sn.n_neurons, list(sn.chosen)
        factors = s.reader.factors()
        b = banks.load_bank(bank or ("world" if factors is not None else "general"))
        t = time.perf_counter()
        embed = text_embeddings_fn or (
            lambda s_, texts: s_.text_embeddings(texts, progress=progress)
        )
        emb = embed(s, b.texts)  # [text, d_embed]
        atoms = na.text_dictionary(emb)
        unit_pre = NeuronUnitPrecompute(
            s, unit_k, MAP_NEURONS if unit_map_neurons is None else unit_map_neurons,
            bank=(b.texts, emb),
        )  # fmt: skip
        timings["encode_texts_s"] = round(time.perf_counter() - t, 3)
        codes = n_values = None
        if factors is not None:
            codes = factors[1]
            n_values = [int(codes[:, f].max()) + 1 for f in range(codes.shape[1])]
        described = []
        for layer in chosen:
            t = time.perf_counter()
            described.append(
                describe_layer(
                    sn,
                    layer,
                    atoms,
                    b.categories,
                    codes=codes,
                    n_values=n_values,
                    top=top,
                    n_words=n_words,
                    progress=progress,
                    on_norms=unit_pre.add_norms,
                )  # fmt: skip
            )
            unit_pre.add_layer(layer, described[-1].stats, described[-1].directions)
            timings[f"layer_{layer}_s"] = round(time.perf_counter() - t, 3)
        unit_pre.compute_maps(progress)  # maps on the most significant neurons' extreme images
        timings.update(unit_pre.timings)
        lab_name, new_llm = "offline", []
        if labeller == "llm":
            from engine.pipeline.neuron_llm import llm_labels

            t = time.perf_counter()
            lab_name, new_llm = llm_labels(
                store_path, described, b, s.reader.llm_responses(), llm_model, llm_timeout,
                llm_retries, progress,
            )  # fmt: skip
            timings["label_s"] = round(time.perf_counter() - t, 3)
        names = factors[0] if factors is not None else []
        tables, clear, matched = _tables(described, n_neurons, b, names, run_id, lab_name)
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        params = {"neuron_layers": chosen, "bank": b.name, "top": top, "words": n_words,
                  "labeller": lab_name}  # fmt: skip
        run = provenance.run_record("interpret-neurons", run_id, s, params, timings, started)
        with mutate_store(store_path, expect_version=s.version_path) as w:
            w.replace_neuron_layers(tables, chosen)
            unit_pre.write(w, run_id)
            w.add_llm_responses(new_llm)
            w.record_run(run)
    return NeuronInterpretResult(run_id, chosen, n_neurons, b.name, timings, clear, matched,
                                 lab_name)  # fmt: skip


def _tables(described, n_neurons, b, names, run_id, labeller="offline"):
    stats_rows, word_rows, gt_rows = [], [], []
    clear = matched = 0
    comparable = set(names) <= set(b.vocabulary)
    for d in described:
        st = d.stats
        for j in range(n_neurons):
            stats_rows.append(
                (d.layer, j, float(st.mean_norm[j]), float(st.threshold[j]),
                 float(st.top_norm[0, j]), st.top_image[:, j].tolist(),
                 d.directions[j].tolist(), d.labels[j], labeller, run_id)
            )  # fmt: skip
            nz = np.flatnonzero(d.coef[j])
            nz = nz[np.argsort(-np.abs(d.coef[j, nz]), kind="stable")]
            for rank, i in enumerate(nz):
                word_rows.append(
                    (d.layer, j, rank, b.texts[i], b.categories[i], float(d.coef[j, i]),
                     b.name, run_id)
                )  # fmt: skip
            if d.eta2 is not None:
                truth = groundtruth.dominant_factor(d.eta2[:, j], names)
                for f, name in enumerate(names):
                    dom = name == truth.factor
                    match = (
                        (dom and groundtruth.label_matches(d.labels[j], name))
                        if comparable
                        else None
                    )
                    gt_rows.append(
                        (d.layer, j, name, float(d.eta2[f, j]), dom, d.labels[j], match, run_id)
                    )
                if truth.is_dominant and comparable:
                    clear += 1
                    matched += groundtruth.label_matches(d.labels[j], truth.factor)
    tables = {
        "neuron_stats": pd.DataFrame(stats_rows, columns=[
            "layer", "neuron", "mean_norm", "threshold", "top_norm", "top_images", "direction",
            "label", "labeller", "run_id"]),
        "neuron_words": pd.DataFrame(word_rows, columns=[
            "layer", "neuron", "rank", "text", "category", "weight", "bank", "run_id"]),
        "neuron_ground_truth": pd.DataFrame(gt_rows, columns=[
            "layer", "neuron", "factor", "eta2", "is_dominant", "label", "match", "run_id"]),
    }  # fmt: skip
    return tables, clear, matched
