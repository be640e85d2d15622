"""The store's model: loaded as the store records it, verified against the store's weights hash.

The one place a store's model is built (CLI commands, pipelines, the dashboard and notebooks all
come through `StoreSession.model`, which calls `load_store_model`).
"""

from __future__ import annotations

from engine.errors import UserError
from engine.model import LoadedModel, load_model
from engine.store.schema import ModelRecord

RANDOM_PREFIX = "random:seed"


def seed_of(weights_hash: str) -> int:
    """The init seed of a random-weights store (`random:seedN` -> N; 0 otherwise)."""
    if weights_hash.startswith(RANDOM_PREFIX):
        try:
            return int(weights_hash[len(RANDOM_PREFIX) :])
        except ValueError:
            return 0
    return 0


def load_store_model(record: ModelRecord, *, device: str = "cpu") -> LoadedModel:
    """The model a store was built with, refused (UserError) when its weights differ from the
    ones the store recorded: results of other weights never mix with the stored decomposition.

    Random-weights stores are rebuilt at their recorded seed; `"unknown"` on either side (a
    model whose weights cannot be hashed) is not compared."""
    lm = load_model(
        record.model_spec,
        device=device,
        random_weights=record.random_weights,
        seed=seed_of(record.weights_hash),
    )
    stored, loaded = record.weights_hash, lm.weights_hash
    if "unknown" not in (stored, loaded) and stored != loaded:
        raise UserError(
            f"the weights of {record.model_spec} differ from the ones this store was built with "
            f"({loaded[:16]} here, {stored[:16]} in the store); rebuild the store with these "
            "weights, or point the model spec at the original ones"
        )
    check_tokenizer(record, lm)
    return lm


def check_tokenizer(record: ModelRecord, lm: LoadedModel) -> None:
    """Refuse mixing text embeddings of the stand-in tokenizer (random weights only) with the
    model's own: the store records which one made its text embeddings (`ModelRecord.tokenizer`)."""
    from engine.model.tokenizers import STANDIN_NAME

    loaded = str(lm.extra.get("tokenizer", ""))
    if STANDIN_NAME in (record.tokenizer, loaded) and record.tokenizer != loaded:
        raise UserError(
            f"{record.model_spec}: this store's text embeddings were made by "
            f"{record.tokenizer!r}, but here the tokenizer is {loaded!r}; rebuild the store"
        )
