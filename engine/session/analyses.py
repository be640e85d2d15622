"""The five analyses of an image, as functions of (session, query, choices).

The math is `engine.core.analysis`; here each analysis gathers what it needs from the session
(stored per-head contributions, the query's decomposition, text embeddings by the store's model)
and returns plain results: rankings (`analysis.Ranking`: stored image ids and scores, best first)
or a heat map `[grid, grid]`. The dashboard's pages, the notebook API and the benchmarks call
these and nothing else.

A *query* is an `ImageQuery` (or anything with `.image`, `.sha`, `.store_index`), or a PIL image.
*heads* are (layer, head) pairs of stored heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.core import analysis
from engine.core.labels import MIXED, NON_LABELS
from engine.errors import UserError

Head = tuple[int, int]


def property_heads(s) -> dict[str, list[Head]]:
    """Properties and the heads carrying them: the store's labels (`mixed` and non-labels left
    out) as "LABEL (label)", else the demo world's ground truth as "FACTOR (ground truth)"."""
    out: dict[str, list[Head]] = {}
    for hd, lab in sorted(s.head_labels().items()):
        if lab not in (MIXED, *NON_LABELS):
            out.setdefault(f"{lab} (label)", []).append(hd)
    if not out:
        gt = s.reader.table("ground_truth")
        for r in gt[gt["is_dominant"]].itertuples() if len(gt) else ():
            out.setdefault(f"{r.factor} (ground truth)", []).append((int(r.layer), int(r.head)))
    return out


def _exclude(q) -> list[int]:
    i = getattr(q, "store_index", None)
    return [int(i)] if i is not None else []


def _need_heads(heads: Sequence[Head]) -> None:
    if not len(heads):
        raise UserError("choose at least one head")


def property_neighbours(
    s, query, heads: Sequence[Head], *, combine: str = "concat", k: int = 8
) -> analysis.Ranking:
    """1. The stored images nearest the query over `heads` combined (`combine`: concat = the
    mean of per-head cosines, sum = cosine of the summed unit contributions)."""
    q = s.as_query(query)
    _need_heads(heads)
    if combine not in analysis.COMBINE_MODES:
        raise UserError(f"unknown combine {combine!r}; use {', '.join(analysis.COMBINE_MODES)}")
    heads = s.check_heads(heads)
    banks = [s.head_contributions(l, h) for l, h in heads]
    scores = analysis.property_scores(s.query_head_out(q, heads), banks, combine)  # [image]
    return analysis.top_k(scores, k, _exclude(q))


def topic_segmentation(s, query, text: str, *, heads=None) -> np.ndarray:
    """2. Where in the image the chosen heads (all when None; or a [layer, head] mask) push the
    embedding toward `text`: the summed per-patch map -> [grid, grid]."""
    text = str(text).strip()
    if not text:
        raise UserError("type a text")
    direction = s.text_embeddings([text])[0]  # [d_embed]
    maps = s.maps(query, direction)  # [layer, head, grid, grid]
    return analysis.aggregate_maps(maps, s.head_mask(heads))


def contrastive_segmentation(s, query, text_a: str, text_b: str, *, heads=None) -> np.ndarray:
    """3. Where the image is more `text_a` than `text_b` (direction text_a - text_b; positive =
    more text_a) -> [grid, grid]."""
    text_a, text_b = str(text_a).strip(), str(text_b).strip()
    if not text_a or not text_b:
        raise UserError("type both texts")
    emb = s.text_embeddings([text_a, text_b])  # [text, d_embed]
    maps = s.maps(query, analysis.contrast_direction(emb[0], emb[1]))
    return analysis.aggregate_maps(maps, s.head_mask(heads))


def head_image_neighbours(s, query, heads: Sequence[Head], *, k: int = 8) -> list[analysis.Ranking]:
    """4. Per head, the stored images whose contribution of that head is most cosine-similar
    to the query's (one ranking per head, in the order given)."""
    q = s.as_query(query)
    _need_heads(heads)
    heads = s.check_heads(heads)
    banks = [s.head_contributions(l, h) for l, h in heads]
    return analysis.head_image_neighbours(s.query_head_out(q, heads), banks, k, _exclude(q))


def head_text_neighbours(s, head: Head, text: str, *, k: int = 8) -> analysis.Ranking:
    """5. The stored images one head ranks highest for `text` (score = head_out · text, the
    head's direct share of the image-text logit)."""
    text = str(text).strip()
    if not text:
        raise UserError("type a text")
    (head,) = s.check_heads([head])
    direction = s.text_embeddings([text])[0]  # [d_embed]
    return analysis.top_k(s.head_contributions(*head).dot(direction), k)
