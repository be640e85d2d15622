"""Text embeddings from an open_clip model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from engine.model.loading import LoadedModel


@torch.no_grad()
def encode_text(lm: LoadedModel, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """Unit-normalised text embeddings [text, d_embed] (fp32, on CPU)."""
    out = []
    for s in range(0, len(texts), batch_size):
        tokens = lm.tokenizer(list(texts[s : s + batch_size])).to(lm.device)
        e = lm.model.encode_text(tokens).float()
        out.append(torch.nn.functional.normalize(e, dim=-1).cpu())
    if not out:
        return torch.zeros(0, lm.dims.d_embed)
    return torch.cat(out)
