"""What an interpretation concluded, in a few lines: heads per label, and what many `mixed` mean.

A head is `mixed` when no property holds a majority of its top TextSpan texts' variance. A few
mixed heads are normal (early layers, heads that mix properties); all or most heads mixed usually
means there is nothing for TextSpan to find: random-init weights, too few images, images that do
not vary in what the bank describes, or a bank that does not describe them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from engine.core.labels import MIXED

MOST_MIXED = 0.75  # a share of mixed heads above which the summary warns


@dataclass(frozen=True)
class LabelSummary:
    counts: dict[str, int]  # label -> heads, most heads first, `mixed` last
    n_heads: int
    n_mixed: int
    note: str  # "" unless all or most heads are mixed

    def to_dict(self) -> dict:
        return {"counts": self.counts, "heads": self.n_heads, "mixed": self.n_mixed,
                "note": self.note}  # fmt: skip

    def lines(self) -> list[str]:
        """The summary as printed by `interpret` (one line per label, then the note)."""
        if not self.n_heads:
            return ["no heads were labelled"]
        width = max(len(k) for k in self.counts)
        out = [f"labels ({self.n_heads} heads):"]
        out += [f"  {k:<{width}}  {v:>4}" for k, v in self.counts.items()]
        if self.note:
            out.append("note: " + self.note)
        return out


def summarise_labels(labels: Sequence[str], *, random_weights: bool = False) -> LabelSummary:
    """Count heads per label (labels: [head]); explain when all or most are `mixed`."""
    c = Counter(str(x) for x in labels)
    n, n_mixed = sum(c.values()), c.get(MIXED, 0)
    counts = {k: v for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])) if k != MIXED}
    if n_mixed:
        counts[MIXED] = n_mixed
    note = ""
    if n and n_mixed >= MOST_MIXED * n:
        which = f"all {n} heads are" if n_mixed == n else f"{n_mixed} of {n} heads are"
        why = (
            "this store was built with random weights, where no head encodes a property, so this "
            "is the expected result"
            if random_weights
            else "usual causes: weights that are not trained (random init), too few images or "
            "images that do not vary in what the bank describes, or a bank that does not describe "
            "them (try --bank general or your own --bank FILE)"
        )
        note = (
            f"{which} `{MIXED}`: no property holds a majority of their top texts' variance; {why}"
        )
    return LabelSummary(counts, n, n_mixed, note)
