"""A neuron's label from what it responds to: its effect's covariance with the image (math only).

The OMP words (`neuron_analysis.sparse_text`) describe the direction a neuron's second-order
effect *writes*. Which property of the image the neuron *responds to* is a different question,
and the one a label answers: on the demo world, the neurons whose effect is explained by one
planted factor (η² ≥ 0.5) write, for about half of them, along another factor's text directions
(a size-driven neuron of layer 6 pushes the embedding along shape texts), even when their
written direction is taken from the factor's own group means (docs/interpretation.md).

The response of neuron n, over images i with unit image embeddings x̂_i (the model's own
`output`, normalised as zero-shot normalises it), effect coordinates k_i [K] and principal
direction v [K] (sign fixed: most top images project positively):

    response_n = Σ_i ((k_i − k̄) · v) (x̂_i − x̄)        [d_embed]

the covariance between the neuron's effect along its direction and the image embedding: it
points from the average image towards the images that drive the neuron along +v. Its best texts
are the bank texts of largest cosine with it (the same dictionary as OMP: texts mean-removed and
unit-normalised), and the label is `labels.offline_label` over the categories of the first
`labels.TOP_K` of them, weighted by their cosines (the heads' majority rule). Nothing here reads
the world's factor codes.

`ResponseMoments` accumulates Σ p_i x̂_i, Σ p_i, Σ x̂_i with p_i = k_i · v (a constant shift of p
leaves the covariance unchanged, so k̄ is not needed) over the images of `response_blocks`:
ceil(max_images / chunk) whole store chunks spread evenly over the collection (a chunk is read
whole anyway), so about `max_images` images. The covariance of a d_embed-dimensional embedding with one number
needs a few thousand images, not fifty thousand: on the demo store an eighth of the images gives
the same labels (docs/interpretation.md). The neuron's own effect is part of x̂_i; on the demo
store its share of the response is under 3 % (measured).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.core import labels

RESPONSE_IMAGES = 4096  # images whose covariance with the effect gives the response
RESPONSE_TEXTS = 10  # best texts kept per neuron (the LLM labeller's evidence)


def response_blocks(n_images: int, step: int, max_images: int = RESPONSE_IMAGES):
    """[(a, b)] blocks of `step` images (the store's chunks), at most ceil(max_images / step) of
    them, spread evenly over 0..n_images (first and last included); all when they fit."""
    if n_images <= 0 or step < 1:
        return []
    starts = list(range(0, n_images, step))
    m = min(len(starts), max(1, math.ceil(max_images / step)))
    pick = np.unique(np.round(np.linspace(0, len(starts) - 1, m)).astype(int))
    return [(starts[i], min(n_images, starts[i] + step)) for i in pick]


class ResponseMoments:
    """Streamed moments of (effect along the direction, unit image embedding).
    v: [neuron, K] principal directions (frame coordinates)."""

    def __init__(self, v: np.ndarray, d_embed: int):
        self.v = torch.from_numpy(np.asarray(v, dtype=np.float32))  # [neuron, K]
        self.n = 0
        self.sum_px = torch.zeros(self.v.shape[0], d_embed, dtype=torch.float64)
        self.sum_p = torch.zeros(self.v.shape[0], dtype=torch.float64)
        self.sum_x = torch.zeros(d_embed, dtype=torch.float64)

    def update(self, q: np.ndarray, scale: np.ndarray, x: np.ndarray) -> None:
        """One block in the stored form: q [image, K, neuron] int8, scale [image, neuron]
        (k = q * scale); x [image, d_embed] image embeddings (not normalised)."""
        qf = torch.from_numpy(np.ascontiguousarray(q)).float()
        # p_i = k_i · v = scale_i (q_i · v): [image, neuron]
        p = torch.einsum("ikn,nk->in", qf, self.v) * torch.from_numpy(
            np.asarray(scale, dtype=np.float32)
        )
        xs = torch.from_numpy(np.asarray(x, dtype=np.float32))
        xs = xs / xs.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [image, d_embed]
        self.sum_px += (p.T @ xs).double()
        self.sum_p += p.sum(dim=0).double()
        self.sum_x += xs.sum(dim=0).double()
        self.n += len(xs)

    def response(self) -> np.ndarray:
        """[neuron, d_embed] Σ_i ((k_i − k̄)·v)(x̂_i − x̄) over the images seen."""
        if self.n == 0:
            raise ValueError("no images were accumulated")
        return (self.sum_px - self.sum_p[:, None] * (self.sum_x / self.n)[None]).numpy()


def response_texts(response: np.ndarray, atoms: np.ndarray, n: int = RESPONSE_TEXTS):
    """The texts most like the images that drive each neuron. response [neuron, d_embed];
    atoms [text, d_embed] unit texts (`neuron_analysis.text_dictionary`) -> (indices [neuron, n]
    best first, cosines [neuron, n])."""
    r = np.asarray(response, dtype=np.float64)
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-30)
    cos = r @ np.asarray(atoms, dtype=np.float64).T  # [neuron, text]
    n = max(1, min(int(n), cos.shape[1]))
    idx = np.argsort(-cos, axis=1, kind="stable")[:, :n]
    return idx, np.take_along_axis(cos, idx, axis=1)


def response_labels(idx: np.ndarray, cos: np.ndarray, categories: list[str]) -> list[str]:
    """Per neuron: `labels.offline_label` over the categories of its best texts (idx, cos from
    `response_texts`), weighted by their positive cosines."""
    return [
        labels.offline_label([categories[i] for i in row], np.clip(c, 0.0, None))
        for row, c in zip(idx, cos, strict=True)
    ]
