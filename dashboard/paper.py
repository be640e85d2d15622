"""The paper's published figures for a store's model: scores, reference labels, property heads."""

from __future__ import annotations

from engine.sources import reference

PAPER_SCORES = reference.paper_scores()  # the paper's Tables 1-2, shown beside computed scores


def paper_model(store) -> tuple[str, str] | None:
    """(arch, pretrained tag) when the store's model is one of the paper's six, else None."""
    rec = store.model_record
    m = reference.paper_model(rec.model_spec, rec.random_weights)
    return None if m is None else (m.arch, m.pretrained)


def reference_labels(store) -> dict[tuple[int, int], str]:
    """Published labels of the paper's demo for this store's model (empty if none)."""
    pm = paper_model(store)
    df = None if pm is None else reference.reference_labels(*pm)
    if df is None:
        return {}
    return {(int(r.layer), int(r.head)): str(r.label) for r in df.itertuples()}


def reference_properties(store) -> dict[str, list[tuple[int, int]]]:
    """The paper demo's property -> heads lists for this store's model (empty if none)."""
    pm = paper_model(store)
    df = None if pm is None else reference.reference_property_heads(*pm)
    if df is None:
        return {}
    out: dict[str, list[tuple[int, int]]] = {}
    for r in df.itertuples():
        out.setdefault(str(r.property), []).append((int(r.layer), int(r.head)))
    return out
