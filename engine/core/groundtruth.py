"""Ground truth for a head on the demo world: which factor explains its contribution (math only).

η² of a factor = between-group sum of squares / total sum of squares of the head's contribution
C `[image, d_embed]`, grouping images by the factor's value and summing over d_embed. It is the
share of the head's variance that the factor's groups explain (1: the head encodes only that
factor; about (groups-1)/images for a factor it ignores).

Sums of squares are invariant under an orthonormal change of basis, so η² of a head's
coordinates `[image, d_head]` equals η² of its contributions in embedding space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLEAR_ETA2 = 0.5


def eta2(c: np.ndarray, codes: np.ndarray) -> float:
    """η² of one factor. c: [image, d_embed]; codes: [image] ints (negative = not defined, skipped)."""
    c = np.asarray(c, dtype=np.float64)
    codes = np.asarray(codes)
    if c.ndim != 2 or codes.shape != (c.shape[0],):
        raise ValueError(f"need c [image, d_embed] and codes [image]; got {c.shape}, {codes.shape}")
    keep = codes >= 0
    c, codes = c[keep], codes[keep].astype(np.int64)
    if c.shape[0] < 2:
        return 0.0
    mu = c.mean(axis=0)  # [d_embed]
    total = float(((c - mu) ** 2).sum())
    if total <= 0.0:
        return 0.0
    _, inv, counts = np.unique(codes, return_inverse=True, return_counts=True)
    order = np.argsort(inv, kind="stable")  # images grouped by value
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(c[order], starts, axis=0)  # [group, d_embed]
    means = sums / counts[:, None]  # [group, d_embed]
    between = float((counts[:, None] * (means - mu) ** 2).sum())
    return between / total


def head_eta2(c: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """η² of every factor: c [image, d_embed], codes [image, factor] -> [factor]."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [image, factor]; got {codes.shape}")
    return np.array([eta2(c, codes[:, f]) for f in range(codes.shape[1])])


@dataclass(frozen=True)
class HeadTruth:
    factor: str  # the dominant factor (argmax η²)
    eta2: float
    is_dominant: bool  # "clear": η² >= CLEAR_ETA2


def dominant_factor(
    eta2s: np.ndarray, factor_names: list[str], clear: float = CLEAR_ETA2
) -> HeadTruth:
    """The head's true property: eta2s [factor] -> the argmax factor, clear when η² >= `clear`."""
    i = int(np.argmax(eta2s))
    return HeadTruth(factor_names[i], float(eta2s[i]), bool(eta2s[i] >= clear))


def label_matches(label: str, factor: str) -> bool:
    """World bank categories are factor names: a label matches when it is the factor's name."""
    return label.strip().lower() == factor.strip().lower()
