"""Head labels from TextSpan picks: the offline labeller and label normalisation (math only).

Normalisation is explicit, each step an option: `case` (lower-case), `plurals` (drop one trailing
"s", but not "ss": "Patterns" -> "pattern", "Body parts" -> "body part"; "Activities" stays
"activitie", which is how the paper's Table 1 counts), `synonyms` (a mapping applied after the
other two; `SYNONYMS` maps free answers onto the general bank's vocabulary).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

MIXED = "mixed"
NON_LABELS = ("unknown", "distractor")  # bank categories that never become a label
LABELLERS = ("offline", "llm")  # `offline_label` here; the LLM labeller in engine.pipeline.llm
TOP_K = 5

# free label -> general-bank category. Keys are matched after case and plural folding.
SYNONYMS: dict[str, str] = {
    **dict.fromkeys(
        ["color", "colour", "colorful", "colourful", "colorpalette", "color palette", "hue"],
        "colors",
    ),
    **dict.fromkeys(
        [
            "location",
            "geo-location",
            "geolocation",
            "geographic location",
            "geography",
            "region",
            "city",
            "country",
            "place",
            "urban",
            "travel",
        ],
        "locations",
    ),
    **dict.fromkeys(["animal", "wildlife", "pet", "marine", "marine life", "fauna"], "animals"),
    **dict.fromkeys(["bird", "avian"], "birds"),
    **dict.fromkeys(
        ["landscape", "scenery", "earth", "waterbody", "flower", "plant", "outdoor"], "nature"
    ),
    **dict.fromkeys(["environment", "atmosphere", "climate", "wind"], "weather"),
    **dict.fromkeys(["textile", "surface", "feel"], "texture"),
    **dict.fromkeys(["design", "motif", "print"], "pattern"),
    **dict.fromkeys(
        ["artwork", "artistic", "art style", "style", "aesthetic", "painting", "medium"], "art"
    ),
    **dict.fromkeys(
        [
            "photo",
            "photo style",
            "camera",
            "technique",
            "perspective",
            "composition",
            "quality",
            "effect",
            "overlay",
            "visual",
        ],
        "photography",
    ),
    **dict.fromkeys(["object", "item", "device", "timepiece", "tool", "thing"], "objects"),
    **dict.fromkeys(
        ["expression", "facial expression", "feeling", "mood", "sentiment", "emotional"],
        "emotion",
    ),
    **dict.fromkeys(["number", "count", "quantity", "numeral", "pair"], "counting"),
    **dict.fromkeys(
        [
            "letter",
            "writing",
            "typography",
            "text",
            "word",
            "alphabet",
            "character",
            "word starting with the letter z",
        ],
        "letters",
    ),
    **dict.fromkeys(["apparel", "fashion", "garment", "outfit", "clothe", "jewelry"], "clothing"),
    **dict.fromkeys(["description", "descriptive", "descriptor", "topic", "scene"], "subject"),
    **dict.fromkeys(["material", "craftsmanship"], "materials"),
    **dict.fromkeys(["time of day", "night-scene", "night", "daytime"], "time"),
    **dict.fromkeys(["season", "seasonal", "holiday"], "seasons"),
    **dict.fromkeys(["cuisine", "dish", "meal", "drink"], "food"),
    **dict.fromkeys(["vehicle", "transportation", "transport"], "vehicles"),
    **dict.fromkeys(["building", "structure", "architectural"], "architecture"),
    **dict.fromkeys(
        ["person", "human", "occupation", "profession", "age", "performer", "relationship"],
        "people",
    ),
    **dict.fromkeys(["sport", "activity", "activitie", "game", "athletic"], "sports"),
    **dict.fromkeys(["light", "illumination"], "lighting"),
}


def normalise_label(
    label: str,
    *,
    case: bool = True,
    plurals: bool = True,
    synonyms: Mapping[str, str] | None = None,
) -> str:
    """One label in a comparable form (see the module docstring for the three options)."""
    s = " ".join(str(label).strip().rstrip(".").split())
    if case:
        s = s.lower()
    if plurals and len(s) > 3 and s.endswith("s") and not s.endswith("ss"):
        s = s[:-1]
    if synonyms:
        folded = {normalise_label(k, case=True, plurals=True): v for k, v in synonyms.items()}
        key = normalise_label(s, case=True, plurals=True)
        if key in folded:
            return normalise_label(folded[key], case=case, plurals=plurals)
    return s


def offline_label(
    categories: Sequence[str], weights: Sequence[float] | np.ndarray, top_k: int = TOP_K
) -> str:
    """The category holding a strict majority of the removed variance among the top-k picks.

    categories: [pick] the bank category of each picked text, best first; weights: [pick] the
    share of variance each pick removed. Picks tagged `unknown`/`distractor` count in the total
    but never win. `mixed` when no category has more than half, or there are no picks.
    """
    cats = list(categories)[:top_k]
    w = np.clip(np.asarray(weights, dtype=np.float64)[:top_k], 0.0, None)
    if not cats or w.sum() <= 0:
        return MIXED
    totals: dict[str, float] = {}
    for c, wi in zip(cats, w, strict=True):
        totals[c] = totals.get(c, 0.0) + float(wi)
    best = max(totals, key=lambda c: (totals[c], -cats.index(c)))
    if best in NON_LABELS or totals[best] <= 0.5 * float(w.sum()):
        return MIXED
    return best


def clean_answer(answer: str) -> str:
    """First line of a free LLM answer, without quotes, a `Label:` prefix or end punctuation."""
    s = (answer or "").strip().splitlines()[0] if (answer or "").strip() else ""
    s = re.sub(r"^(the\s+)?(property|label|answer)\s*(is)?\s*[:\-]?\s*", "", s, flags=re.I)
    return s.strip().strip("\"'`*").strip().rstrip(".!").strip()


_BRITISH = {"colour": "color", "grey": "gray", "centre": "center"}


def _spelling(s: str) -> str:
    """Fold British spellings so "color" finds the world's "colour" factor."""
    for uk, us in _BRITISH.items():
        s = s.replace(uk, us)
    return s


def map_answer(
    answer: str, vocabulary: Sequence[str], synonyms: Mapping[str, str] | None = None
) -> tuple[str, bool]:
    """Map a free answer onto the vocabulary: (label, in_vocabulary).

    Exact match after case/plural folding, else through `synonyms` (default `SYNONYMS`) when the
    synonym's target is in the vocabulary, else the answer is kept as a new label (folded case).
    """
    synonyms = SYNONYMS if synonyms is None else synonyms
    s = clean_answer(answer)
    if not s:
        return MIXED, False
    by_norm = {_spelling(normalise_label(v)): v for v in vocabulary}
    key = _spelling(normalise_label(s))
    if key in by_norm:
        return by_norm[key], True
    mapped = _spelling(normalise_label(s, synonyms=synonyms))
    if mapped in by_norm:
        return by_norm[mapped], True
    return s.lower(), False


def _preset(case: bool, plurals: bool, synonyms: bool):
    def f(label: str) -> str:
        return normalise_label(
            label, case=case, plurals=plurals, synonyms=SYNONYMS if synonyms else None
        )

    return f


# the normalisations compared in docs/interpretation.md (the CLI's choices)
NORMALISATIONS = {
    "none": _preset(False, False, False),
    "case": _preset(True, False, False),
    "case+plurals": _preset(True, True, False),
    "case+plurals+synonyms": _preset(True, True, True),
}
DEFAULT_NORMALISATION = "case+plurals"
