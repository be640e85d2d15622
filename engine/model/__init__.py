"""The model boundary: the ONLY package that touches open_clip.

specs (names, parsing, local availability) -> loading (build + support check) -> capture (weights
by state-dict name, forward hooks) and text (text embeddings). The data types it fills live in
`engine.core.types`, so the math never imports this package.
"""

from engine.model.capture import capture, capture_grad, decompose_images, vision_weights
from engine.model.loading import LoadedModel, check_supported, load_model
from engine.model.specs import (
    DEMO_DIR,
    MODELS,
    ModelEntry,
    ModelSpec,
    list_models,
    list_open_clip_vits,
    local_weights,
    parse_spec,
)
from engine.model.text import encode_text

__all__ = [
    "DEMO_DIR",
    "MODELS",
    "LoadedModel",
    "ModelEntry",
    "ModelSpec",
    "capture",
    "capture_grad",
    "check_supported",
    "decompose_images",
    "encode_text",
    "list_models",
    "list_open_clip_vits",
    "load_model",
    "local_weights",
    "parse_spec",
    "vision_weights",
]
