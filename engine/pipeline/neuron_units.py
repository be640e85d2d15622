"""Unit pages for MLP neurons, precomputed by `interpret --neurons` in its one pass over the store.

`NeuronUnitPrecompute` rides on `describe_layer`'s streamed statistics (no further read of
`neuron_coord`): a per-chunk hook hands it each chunk's centred effect norms `[image, neuron]`
(the quantity the neuron's significance is made of), and after each layer it reads what
`NeuronStats` already keeps in memory, the `top` (100) images of largest centred effect norm with
their centred frame coordinates. From these, per neuron (math in `engine.core.neuron_units`):

- **top-k / bottom-k images along its direction** d = v @ Q_n: the projection of image i is
  `effect_i · d = k_i · v` (frame coordinates; uncentred, so it is comparable with the live map).
  Centring shifts every projection by the same μ·v, so the ranking is the centred one, and an
  image outside the kept set has |centred projection| ≤ its centred norm ≤ the neuron's threshold
  (the `top`-th largest norm). The k best of the kept set are therefore *certainly* the store's
  top-k when the k-th of them projects at least the threshold (resp. the bottom-k when the k-th
  lowest is at most minus it), or when the kept set is every image; `unit_summary.exact_top` /
  `exact_bottom` record it. Otherwise they are the extremes among the neuron's `top` most affected
  images (where its effects are significant), and the page says so.
- **histograms**: the centred effect norm over every image (`StreamingHistogram`: equal-width bins
  from 0, widths doubled as larger norms arrive, exact counts); the projection over the kept set
  only (`proj_images`; the other images lie within ± the threshold).
- **share of embedding variance**: its effect's total variance (Σ‖k - μ‖² / n) over the
  embedding's (the same sampled `output` variance as the heads').
- **bank texts** nearest each sign of its direction (as the heads').
- **per-patch maps** on its top and bottom images for the `map_neurons` most significant neurons
  (all of them would cost 2k model forwards per neuron; 64 × 32 images by default): the store's
  model runs once per image, batched, capturing every chosen layer (`capture_neurons`), and
  `engine.core.neuron_maps.token_weights` splits each neuron's effect along d over the tokens.

Rows go to the unit tables with `kind = 'neuron'`, replacing the interpreted layers' neuron rows.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import torch

from engine.core import neuron_analysis as na
from engine.core import neuron_units as nu
from engine.core import units
from engine.core.layers import unit_name
from engine.errors import UserError
from engine.pipeline.units import (
    EMBED_VAR_SAMPLE,
    N_TEXTS,
    ImageLoader,
    maps_model,
    why_no_maps,
)

MAP_NEURONS = 64  # most significant neurons (all chosen layers) whose examples get maps


def embedding_variance(reader) -> tuple[float, int]:
    """(the embedding's total variance, images it was taken over): every image up to
    `EMBED_VAR_SAMPLE`, else evenly spaced whole image chunks (as the heads' unit pages)."""
    info = reader.info
    n = int(info["n_images"])
    out = reader.lazy("output")  # [image, d_embed]
    step = max(1, int(info.get("image_chunk") or 4096))
    starts = list(range(0, n, step))
    if len(starts) * step > EMBED_VAR_SAMPLE:
        pick = np.linspace(0, len(starts) - 1, max(1, EMBED_VAR_SAMPLE // step)).round()
        starts = [starts[int(i)] for i in np.unique(pick)]
    return (
        units.total_variance(out[a : a + step] for a in starts),
        sum(min(step, n - a) for a in starts),
    )


class NeuronUnitPrecompute:
    """Accumulates neuron unit summaries during `interpret --neurons`; see the module doc."""

    def __init__(self, session, k: int = units.DEFAULT_K, map_neurons: int = MAP_NEURONS,
                 bank=None):  # fmt: skip
        """`bank`: (texts, unit embeddings `[text, d_embed]`) of the description bank."""
        if k < 1:
            raise UserError("--unit-k must be at least 1")
        self.session, self.k = session, int(k)
        self.map_neurons = max(0, int(map_neurons))
        self.bank = bank
        self.info = dict(session.reader.info)
        self.n_images = int(self.info["n_images"])
        t = time.perf_counter()
        self.embed_var, self.embed_var_images = embedding_variance(session.reader)
        self.norm_hists: dict[int, nu.StreamingHistogram] = {}
        self.summaries: dict[int, nu.NeuronUnits] = {}  # layer -> every neuron's summary
        self.directions: dict[int, np.ndarray] = {}  # layer -> [neuron, d_embed]
        self.significance: dict[int, np.ndarray] = {}  # layer -> [neuron] mean centred norm
        self.maps: dict[tuple[int, int, int], tuple[np.ndarray, float]] = {}
        self.maps_status = "not computed"
        self.mapped: set[tuple[int, int]] = set()
        self.total_var: dict[int, np.ndarray] = {}  # layer -> [neuron] Σ‖k - μ‖² / n
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter() - t

    # ---- fed by describe_layer

    def add_norms(self, layer: int, norms) -> None:
        """The per-chunk hook of `describe_layer`'s second pass: centred norms `[image, neuron]`."""
        t = time.perf_counter()
        h = self.norm_hists.get(layer)
        if h is None:
            h = self.norm_hists[layer] = nu.StreamingHistogram(int(norms.shape[1]))
        h.update(torch.as_tensor(norms))
        self._t += time.perf_counter() - t

    def add_layer(self, layer: int, stats: na.NeuronStats, directions: np.ndarray) -> None:
        """One described layer: its `NeuronStats` (after both passes) and unit directions
        `[neuron, d_embed]`."""
        t = time.perf_counter()
        v = na.principal_directions(stats.top_k)  # [neuron, K], as describe_layer's
        self.summaries[layer] = nu.summarise_neurons(
            stats.top_k.numpy(), stats.top_image.numpy(), stats.threshold, stats.mean, v,
            self.k, n_images=stats.n,
        )  # fmt: skip
        self.directions[layer] = np.asarray(directions, np.float32)
        self.significance[layer] = np.asarray(stats.mean_norm, np.float64)
        self.total_var[layer] = stats.sum_sq.numpy() / max(stats.n, 1)  # [neuron]
        self._t += time.perf_counter() - t

    # ---- maps on the extreme images of the most significant neurons

    def chosen_for_maps(self) -> list[tuple[int, int]]:
        """(layer, neuron) of the `map_neurons` most significant neurons of the chosen layers."""
        keys = [(l, n) for l, s in self.significance.items() for n in range(len(s))]
        sig = np.concatenate([self.significance[l] for l in self.significance]) if keys else []
        order = np.argsort(-np.asarray(sig), kind="stable")[: self.map_neurons]
        return [keys[i] for i in order]

    def compute_maps(self, progress: bool = False) -> None:
        t = time.perf_counter()
        try:
            why = why_no_maps(self.map_neurons != 0, self.info) or self._maps(progress)
            self.maps_status = why or f"computed for the {self.map_neurons} most significant"
        finally:
            self.timings["neuron_unit_summaries_s"] = round(self._t, 3)
            self.timings["neuron_unit_maps_s"] = round(time.perf_counter() - t, 3)

    def _maps(self, progress: bool) -> str | None:
        from engine.core import neuron_maps as nm
        from engine.model.capture import capture_neurons
        from engine.pipeline.neurons import StoredNeurons

        got = maps_model(self.session)
        if isinstance(got, str):
            return got
        lm, w = got
        chosen = self.chosen_for_maps()
        self.mapped = set(chosen)
        sn = StoredNeurons(self.session.reader)
        layers = sorted({l for l, _ in chosen})
        paths = {}  # layer -> (neurons [sel], gains [K, sel])
        for l in layers:
            sel = sorted(n for ll, n in chosen if ll == l)
            u, basis, _ = sn.path_maps(l)
            u_t = torch.as_tensor(np.ascontiguousarray(u[:, sel]), dtype=torch.float32)
            d = torch.as_tensor(self.directions[l][sel])  # [sel, d_embed]
            paths[l] = (sel, nm.path_gains(u_t, torch.as_tensor(basis, dtype=torch.float32), d))
        want: dict[int, list[tuple[int, int]]] = {}  # image -> (layer, neuron) that show it
        for l, n in chosen:
            s = self.summaries[l]
            for i in np.concatenate([s.top[n], s.bottom[n]]).tolist():
                want.setdefault(int(i), []).append((l, n))
        ids = sorted(want)
        loader = ImageLoader.of_session(self.session, lm.preprocess)
        for batch in loader.batches(ids, "neuron unit maps", progress):
            with torch.no_grad():
                cap, ncap = capture_neurons(lm, torch.stack([p for _, p in batch]), [], layers)
                std = (cap.resid.float().var(-1, unbiased=False) + w.ln_post_eps).sqrt()
            for l in layers:
                sel, gains = paths[l]
                later = list(range(l + 1, w.n_layers))
                per_token = nm.token_weights(
                    w, {lp: cap.attn_in[lp] for lp in later},
                    {lp: ncap.ln_std[lp] for lp in later},
                    ncap.acts[l].float()[..., sel], std, later, gains,
                )  # [image, token, sel]  # fmt: skip
                col = {n: j for j, n in enumerate(sel)}
                for j, (i, _) in enumerate(batch):
                    for ll, n in want[i]:
                        if ll == l:
                            t = per_token[j, :, col[n]]
                            self.maps[(l, n, i)] = (t[1:].numpy().copy(), float(t[0]))
        return loader.unreadable(ids)

    # ---- rows of the unit tables

    def frames(self, run_id: str) -> dict[str, pd.DataFrame]:
        summ, ex, hist = [], [], []
        texts, emb = self.bank if self.bank is not None else (None, None)
        for l, s in self.summaries.items():
            dirs = self.directions[l]
            scores = None if emb is None else np.asarray(emb, np.float32) @ dirs.T  # [text, n]
            nh = self.norm_hists.get(l)
            for n in range(s.n_neurons):
                name = unit_name("neuron", l, n)
                tv = float(self.total_var[l][n])
                share = tv / self.embed_var if self.embed_var > 0 else float("nan")
                near = (None, None)
                if scores is not None:
                    along = units.top_k(scores[:, n], N_TEXTS).index
                    against = units.bottom_k(scores[:, n], N_TEXTS)[0]
                    near = ([texts[i] for i in along], [texts[i] for i in against])
                summ.append(
                    (l, None, n, name, self.n_images, tv, share, self.embed_var_images,
                     float(s.explained[n]), float(s.mean_proj[n]), dirs[n].tolist(), self.k,
                     self.maps_status if (l, n) in self.mapped or not self.mapped
                     else f"not computed for this neuron (only the {self.map_neurons} most "
                     "significant have maps)",
                     *(None if t is None else json.dumps(t) for t in near),
                     bool(s.exact_top[n]), bool(s.exact_bottom[n]), int(s.n_kept), run_id)
                )  # fmt: skip
                for side, idx, proj in (("top", s.top[n], s.top_proj[n]),
                                        ("bottom", s.bottom[n], s.bottom_proj[n])):  # fmt: skip
                    for rank, (i, p) in enumerate(zip(idx.tolist(), proj.tolist(), strict=True)):
                        m = self.maps.get((l, n, int(i)))
                        ex.append(
                            (l, n, name, side, rank, int(i), float(p),
                             None if m is None else m[0].tolist(), None if m is None else m[1],
                             run_id)
                        )  # fmt: skip
                hgs = [("projection", s.proj_hist[n])]
                if nh is not None:
                    hgs.insert(0, ("norm", nh.histogram(n)))
                for q, hg in hgs:
                    for b, c in enumerate(hg.counts.tolist()):
                        hist.append((l, n, name, q, b, float(hg.edges[b]), float(hg.edges[b + 1]),
                                     int(c), run_id))  # fmt: skip
        return {
            "unit_summary": pd.DataFrame(summ, columns=[
                "layer", "head", "neuron", "unit", "n_images", "total_var", "variance_share",
                "embed_var_images", "explained", "mean_proj", "direction", "k", "maps",
                "texts_along", "texts_against", "exact_top", "exact_bottom", "proj_images",
                "run_id"]),
            "unit_examples": pd.DataFrame(ex, columns=[
                "layer", "neuron", "unit", "side", "rank", "image_id", "projection", "map",
                "map_cls", "run_id"]),
            "unit_histograms": pd.DataFrame(hist, columns=[
                "layer", "neuron", "unit", "quantity", "bin", "lo", "hi", "count", "run_id"]),
        }  # fmt: skip

    def write(self, writer, run_id: str) -> None:
        """Replace the interpreted layers' neuron rows of the unit tables (a `StoreWriter`)."""
        from engine.store.unit_tables import replace_neuron_units

        replace_neuron_units(writer, self.frames(run_id), sorted(self.summaries))
