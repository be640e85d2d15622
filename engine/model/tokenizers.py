"""Which tokenizer a model's text tower gets, and THE stand-in used only with random weights.

open_clip's SigLIP / SigLIP 2 configs name a Hugging Face tokenizer (`hf_tokenizer_name`): it
needs `transformers` and the tokenizer files (a hub download or the local HF cache). With real
weights that tokenizer is required — anything else would give meaningless text embeddings — and
its absence is one clear error. At random init the text embeddings mean nothing anyway, so a
deterministic stand-in (`STANDIN_NAME`) lets tests and offline builds run; `tokenizer_name`
is what a store records, so a stand-in's text embeddings are never mistaken for real ones.
"""

from __future__ import annotations

import hashlib

import torch

from engine.errors import UserError

STANDIN_NAME = "standin-hash-v1 (random-weights only; not the model's tokenizer)"


class StandInTokenizer:
    """Words -> ids by a stable hash into the text tower's vocabulary: [text, context_length].

    Id 0 pads; ids 1..vocab_size-1 are words (lower-cased, split on whitespace). Deterministic
    across runs and machines (sha1, not Python's salted hash)."""

    name = STANDIN_NAME

    def __init__(self, vocab_size: int, context_length: int):
        self.vocab_size = int(vocab_size)
        self.context_length = int(context_length)

    def _id(self, word: str) -> int:
        h = int.from_bytes(hashlib.sha1(word.encode("utf-8")).digest()[:8], "little")
        return 1 + h % (self.vocab_size - 1)

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self._id(w) for w in str(text).lower().split()][:n]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def load_tokenizer(oc, name: str, model: torch.nn.Module, *, random_weights: bool, spec: str):
    """(tokenizer, tokenizer_name): open_clip's own tokenizer for `name`; if it cannot be made
    (no `transformers`, no tokenizer files offline) the stand-in with random weights, else a
    UserError saying what to install or fetch."""
    try:
        tok = oc.get_tokenizer(name)
        hf = getattr(tok, "tokenizer", None)
        return tok, getattr(hf, "name_or_path", None) or type(tok).__name__
    except Exception as e:  # ImportError (transformers), OSError (hub offline), ...
        if not random_weights:
            raise UserError(
                f"{spec}: the text tokenizer could not be loaded ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}); SigLIP "
                "models need `pip install transformers sentencepiece` and the tokenizer files "
                "(a hub download, or the Hugging Face cache filled on a machine with network)"
            ) from e
    text = getattr(model, "text", model)
    vocab = getattr(text, "vocab_size", None) or getattr(model, "vocab_size", None)
    ctx = getattr(model, "context_length", None) or getattr(text, "context_length", None)
    if not vocab or not ctx:
        raise UserError(f"{spec}: no tokenizer, and the text tower's vocabulary size is unknown")
    return StandInTokenizer(vocab, ctx), STANDIN_NAME
