"""Captures on a model shared by threads (the dashboard's sessions run one model for every user):
each capture records only its own forward pass, never pieces of another thread's. A slow hook
on the first block makes the forwards overlap every time."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from engine.model import load_model
from engine.model.capture import capture, capture_neurons
from engine.model.timm_tower import capture_pooled

pytestmark = pytest.mark.unit


def _pixels(lm, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = lm.dims.image_size
    return torch.randn(1, 3, s, s, generator=g)


def _concurrently(run, n_threads: int = 4) -> list:
    """`run(k)` on n threads released together; their results by k."""
    out: list = [None] * n_threads
    gate = threading.Barrier(n_threads)

    def go(k: int) -> None:
        gate.wait()
        out[k] = run(k)

    threads = [threading.Thread(target=go, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _slow(module: torch.nn.Module):
    """A pre-hook that holds every forward in `module` for a moment, so threads interleave."""
    return module.register_forward_pre_hook(lambda m, inp: time.sleep(0.02))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6))


def test_concurrent_captures_each_see_only_their_own_forward():
    lm = load_model("tiny-test")
    layers = list(range(lm.dims.n_layers))
    pixels = [_pixels(lm, k) for k in range(4)]
    alone = [capture(lm, p, layers) for p in pixels]
    slow = _slow(lm.model.visual.transformer.resblocks[0])
    try:
        together = _concurrently(lambda k: capture(lm, pixels[k], layers))
    finally:
        slow.remove()
    for a, b in zip(alone, together, strict=True):
        assert _same(a.attn_out, b.attn_out) and _same(a.mlp_out, b.mlp_out)
        assert _same(a.resid, b.resid) and _same(a.embed, b.embed)
        assert all(_same(a.attn_in[i], b.attn_in[i]) for i in layers)
        assert _same(a.output, b.output)


def test_concurrent_neuron_captures_each_see_only_their_own_forward():
    lm = load_model("tiny-test")
    pixels = [_pixels(lm, 10 + k) for k in range(4)]
    alone = [capture_neurons(lm, p, [], [0])[1] for p in pixels]
    slow = _slow(lm.model.visual.transformer.resblocks[0])
    try:
        together = _concurrently(lambda k: capture_neurons(lm, pixels[k], [], [0])[1])
    finally:
        slow.remove()
    for a, b in zip(alone, together, strict=True):
        assert _same(a.acts[0], b.acts[0]) and _same(a.written[0], b.written[0])
        assert all(_same(a.ln_std[i], b.ln_std[i]) for i in a.ln_std)


def test_concurrent_pooled_captures_each_see_only_their_own_forward():
    lm = load_model("ClipInterpretTinySigLIP", random_weights=True)
    pixels = [_pixels(lm, 20 + k) for k in range(4)]
    alone = [capture_pooled(lm.model, p, [0]) for p in pixels]
    slow = _slow(lm.model.visual.trunk.blocks[0])
    try:
        together = _concurrently(lambda k: capture_pooled(lm.model, pixels[k], [0]))
    finally:
        slow.remove()
    for a, b in zip(alone, together, strict=True):
        assert _same(a.resid, b.resid) and _same(a.embed, b.embed)
