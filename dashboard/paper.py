"""The paper's published figures for a store's model: scores, reference labels, property heads."""

from __future__ import annotations

import pandas as pd
import settings  # noqa: F401  (the repository root on sys.path)

# The paper's Tables 1 and 2 (integer head counts over 48 or 64 heads, last four layers), as
# published; see engine/data/reference/README.md. Data, shown beside the computed scores.
PAPER_SCORES = pd.DataFrame(
    [
        ("ViT-B-32 OpenAI", "ViT-B-32/openai", 21, 21, 48),
        ("ViT-B-32 DataComp", "ViT-B-32/datacomp_m_s128m_b4k", 25, 7, 48),
        ("ViT-B-16 OpenAI", "ViT-B-16/openai", 24, 17, 48),
        ("ViT-B-16 LAION-2B", "ViT-B-16/laion2b_s34b_b88k", 26, 8, 48),
        ("ViT-L-14 OpenAI", "ViT-L-14/openai", 23, 29, 64),
        ("ViT-L-14 LAION-2B", "ViT-L-14/laion2b_s32b_b82k", 22, 36, 64),
    ],
    columns=["model", "model_spec", "entanglement_heads", "association_heads", "heads"],
)
PAPER_SCORES["entanglement"] = PAPER_SCORES["entanglement_heads"] / PAPER_SCORES["heads"]
PAPER_SCORES["association"] = PAPER_SCORES["association_heads"] / PAPER_SCORES["heads"]


def paper_model(store) -> tuple[str, str] | None:
    """(arch, pretrained tag) when the store's model is one of the paper's six, else None."""
    spec = str(store.info.get("model_spec", ""))
    if store.info.get("random_weights") or spec not in set(PAPER_SCORES["model_spec"]):
        return None
    arch, tag = spec.split("/", 1)
    return arch, tag


def reference_labels(store) -> dict[tuple[int, int], str]:
    """Published labels of the paper's demo for this store's model (empty if none)."""
    pm = paper_model(store)
    if pm is None:
        return {}
    from engine.sources.banks import reference_labels as ref

    df = ref(*pm)
    if df is None:
        return {}
    return {(int(r.layer), int(r.head)): str(r.label) for r in df.itertuples()}


def reference_properties(store) -> dict[str, list[tuple[int, int]]]:
    """The paper demo's property -> heads lists for this store's model (empty if none)."""
    pm = paper_model(store)
    if pm is None:
        return {}
    from engine.sources.banks import reference_property_heads

    df = reference_property_heads(*pm)
    if df is None:
        return {}
    out: dict[str, list[tuple[int, int]]] = {}
    for r in df.itertuples():
        out.setdefault(str(r.property), []).append((int(r.layer), int(r.head)))
    return out
