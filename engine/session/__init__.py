"""The store session: one store opened read-only, and everything computed from it.

A layer between the pipelines and the store / sources / model packages: the CLI commands,
the pipelines, the dashboard, the notebook API (`engine.open_store`) and the benchmarks all
reach a store's model, heads, texts and analyses through it, so each is defined once.

    from engine.session import StoreSession
    s = StoreSession.open("artifacts/demo")   # read-only; s.reader is the StoreReader
    s.meta                  # StoreMeta: the store's typed metadata record
    s.model_record          # ModelRecord: the model the store was built with
    s.model()               # LoadedModel, verified against the store's weights hash (UserError)
    s.heads()               # [(layer, head), ...]: THE store's heads
    s.head_labels()         # {(layer, head): label}
    s.heads_table()         # DataFrame: one row per head, label, TextSpan texts, evidence
    s.text_embeddings(["a red shape"])      # [text, d_embed], by the store's model, cached
    s.head_contributions(l, h)              # core.analysis.HeadContributions (cached)
    q = s.query_from_store(12)              # or ImageQuery.from_image(pil), or a PIL image
    s.query_image(q)        # ImageAnalysis: the query's decomposition (cached by q.sha)
    s.maps(q, direction)    # [layer, head, grid, grid] per-patch maps along a direction
    # the five analyses and ablation: functions of (session, query, choices)
    s.property_neighbours(q, heads, combine="concat", k=8)   -> Ranking
    s.topic_segmentation(q, "a red shape", heads=None)       -> [grid, grid]
    s.contrastive_segmentation(q, "red", "blue", heads=None) -> [grid, grid]
    s.head_image_neighbours(q, heads, k=8)                   -> [Ranking per head]
    s.head_text_neighbours((l, h), "a red shape", k=8)       -> Ranking
    s.ablate("label:colour", tasks=None, random=10, split=0.5, seed=0, per_head=False)
                                                             -> Ablation (what `engine ablate` runs)

The same functions live in `engine.session.analyses` and `engine.session.ablation` (taking the
session first), so adding an analysis is one function there plus its page.
"""

from engine.session.ablation import Ablation, Tasks
from engine.session.model import load_store_model
from engine.session.query import ImageAnalysis, ImageQuery
from engine.session.session import StoreSession

__all__ = [
    "Ablation",
    "ImageAnalysis",
    "ImageQuery",
    "StoreSession",
    "Tasks",
    "load_store_model",
]
