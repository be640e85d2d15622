"""The paper's reference data, in one place: its six models, their published head labels, the
demo's property -> heads lists and the paper's Tables 1-2 (counts of heads).

Everything is loaded from the CSVs shipped in engine/data/reference/ (see its README for their
source); every other mention of the paper's models (the model registry listing, the dashboard's
comparison, the `scores` command, the docs' table) is derived from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pandas as pd

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"
LABELS_CSV = "clip_interpret_head_labels.csv"  # model, pretrained, layer, head, label
PROPERTIES_CSV = "clip_interpret_property_heads.csv"  # model, pretrained, layer, head, property
SCORES_CSV = "paper_scores.csv"  # model, arch, pretrained, training_data, heads, *_heads


@dataclass(frozen=True)
class PaperModel:
    """One of the paper's six models with its Tables 1-2 counts (over its last four layers)."""

    name: str  # e.g. "ViT-B-32 OpenAI"
    arch: str
    pretrained: str  # the open_clip tag
    training_data: str
    heads: int  # heads of the last four layers: 48 (ViT-B) or 64 (ViT-L)
    entanglement_heads: int  # Table 1
    association_heads: int  # Table 2

    @property
    def spec(self) -> str:
        """The model spec that loads it (`engine.model.load_model`)."""
        return f"{self.arch}/{self.pretrained}"

    @property
    def entanglement(self) -> float:
        return self.entanglement_heads / self.heads

    @property
    def association(self) -> float:
        return self.association_heads / self.heads


@cache
def _table(name: str) -> pd.DataFrame:
    return pd.read_csv(REFERENCE / name)


@cache
def paper_models() -> tuple[PaperModel, ...]:
    """The paper's six models, in the order of its tables."""
    return tuple(
        PaperModel(
            str(r.model),
            str(r.arch),
            str(r.pretrained),
            str(r.training_data),
            int(r.heads),
            int(r.entanglement_heads),
            int(r.association_heads),
        )  # fmt: skip
        for r in _table(SCORES_CSV).itertuples()
    )


def paper_model(spec: str, random_weights: bool = False) -> PaperModel | None:
    """The paper model a store's model is (its trained weights), else None."""
    if random_weights:
        return None
    return next((m for m in paper_models() if m.spec == spec), None)


def paper_scores() -> pd.DataFrame:
    """The paper's Tables 1-2: one row per model, counts and their ratios.

    Columns: model, model_spec, arch, pretrained, heads, entanglement_heads, association_heads,
    entanglement, association."""
    return pd.DataFrame(
        [
            {
                "model": m.name,
                "model_spec": m.spec,
                "arch": m.arch,
                "pretrained": m.pretrained,
                "heads": m.heads,
                "entanglement_heads": m.entanglement_heads,
                "association_heads": m.association_heads,
                "entanglement": m.entanglement,
                "association": m.association,
            }  # fmt: skip
            for m in paper_models()
        ]
    )


def _of_model(name: str, arch: str, pretrained: str, columns: list[str]) -> pd.DataFrame | None:
    df = _table(name)
    sel = df[(df["model"] == arch) & (df["pretrained"] == pretrained)]
    return None if sel.empty else sel[columns].reset_index(drop=True)


def reference_labels(arch: str, pretrained: str) -> pd.DataFrame | None:
    """Published labels as DataFrame(layer, head, label) for one model, or None if not published."""
    df = _of_model(LABELS_CSV, arch, pretrained, ["layer", "head", "label"])
    return None if df is None else df.sort_values(["layer", "head"]).reset_index(drop=True)


def reference_property_heads(arch: str, pretrained: str) -> pd.DataFrame | None:
    """The demo's property -> heads lists as DataFrame(property, layer, head), or None."""
    return _of_model(PROPERTIES_CSV, arch, pretrained, ["property", "layer", "head"])
