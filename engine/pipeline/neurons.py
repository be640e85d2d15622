"""The second-order neuron lens in the pipeline: the `--neurons` spec, the build's rows and
constants, and the checks of `verify --neurons` (model) and `verify --store` (stored effects).

Math in `engine.core.second_order`; layout in `engine.store.schema` (`neuron_*` arrays).
"""

from __future__ import annotations

import numpy as np
import torch

from engine.core import second_order as so
from engine.core.decompose import head_bases
from engine.core.layers import GRAMMAR, format_layers, parse_layers
from engine.errors import UserError
from engine.model.capture import capture_neurons, mlp_proj_weight
from engine.model.neuron_check import propagate_write

NEURONS_HELP = (
    "MLP layers whose neurons' second-order effects are stored: " + GRAMMAR + ", e.g. 8-10, "
    "or 9-9 for one layer (default: none; the last layer has no later heads)"
)
# max |Σ_n stored-precision effect_n - the layer's write propagated| / max ||that||, per batch
NEURON_TOL = 1e-4


def parse_neuron_layers(spec, n_layers: int) -> list[int]:
    """`--neurons SPEC` -> sorted absolute layers; None/''/'none' -> []. The last layer is
    refused (its neurons reach no later head)."""
    if spec is None or str(spec).strip().lower() in ("", "none"):
        return []
    layers = parse_layers(spec, n_layers)
    if n_layers - 1 in layers:
        raise UserError(
            f"--neurons {spec!r}: layer {n_layers - 1} is the last block, its neurons reach no "
            f"later head (second-order effects exist for layers 0..{n_layers - 2})"
        )
    return layers


def n_neurons(lm, layers: list[int]) -> int:
    return int(mlp_proj_weight(lm, layers[0]).shape[1]) if layers else 0


class NeuronRows:
    """The lens's weight-only parts for a build's neuron layers (once per process), and per batch
    the rows of `neuron_coord`, `neuron_scale`, `neuron_total`."""

    def __init__(self, lm, weights, layers: list[int], device=None):
        self.lm, self.w = lm, weights
        self.layers = sorted(int(l) for l in layers)
        self.bases = {
            l: so.neuron_bases(weights, mlp_proj_weight(lm, l), l, torch.float32, device)
            for l in self.layers
        }
        self.v2c = {
            l: head_bases(weights, nb.later, torch.float32, device).value_to_coord
            for l, nb in self.bases.items()
        }
        self.worst_error = 0.0

    def constants(self) -> dict[str, np.ndarray]:
        """neuron_u [path, neuron, d_head], neuron_basis [later, head, d_head, d_embed] (every
        layer after the first neuron layer), neuron_chol [neuron_layer, neuron, k, k]."""
        first = self.bases[self.layers[0]]
        us = [nb.u.flatten(0, 1) for nb in self.bases.values()]  # [K_l, neuron, d_head] each
        k_max = first.n_paths
        n = first.n_neurons
        chol = torch.zeros(len(self.layers), n, k_max, k_max)
        for i, nb in enumerate(self.bases.values()):
            chol[i, :, : nb.n_paths, : nb.n_paths] = nb.chol.cpu()
        return {
            "neuron_u": torch.cat(us).float().cpu().numpy(),
            "neuron_basis": first.basis.float().cpu().numpy(),
            "neuron_chol": chol.numpy(),
        }

    @torch.no_grad()
    def rows(self, cap, ncap, std: torch.Tensor, tolerance: float) -> dict[str, np.ndarray]:
        """The batch's neuron rows; refuses (ReconstructionError-like UserError, nothing stored)
        when the factorised sum over neurons misses the layer's propagated write."""
        coords, scales, totals = [], [], []
        for l, nb in self.bases.items():
            c = so.coefficients(self.w, cap.attn_in, ncap.ln_std, ncap.acts[l].float(), nb.later)
            total = so.layer_total(
                self.w, cap.attn_in, ncap.ln_std, ncap.written[l].float(), std, nb, self.v2c[l]
            )
            summed = torch.einsum("ilhn,lhnk->ilhk", c, nb.u)  # Σ_n c u: [image, later, head, k]
            summed = torch.einsum("ilhk,lhke->ie", summed, nb.basis) / std[:, None]
            err = float((summed - total).abs().max() / total.norm(dim=-1).max().clamp_min(1e-30))
            self.worst_error = max(self.worst_error, err)
            if not err <= max(tolerance, NEURON_TOL):
                raise UserError(
                    f"the neuron lens of layer {l} does not sum to the layer's propagated write "
                    f"on this batch ({err:.2e}): nothing was stored"
                )
            k = so.frame_coords(c, std, nb.chol)  # [image, neuron, K]
            q, scale = so.quantise(k.cpu().numpy())
            coords.append(q)
            scales.append(scale)
            totals.append(total.float().cpu().numpy())
        return {
            "neuron_coord": np.concatenate(coords, axis=1),  # [image, path, neuron]
            "neuron_scale": np.stack(scales, axis=1),  # [image, neuron_layer, neuron]
            "neuron_total": np.stack(totals, axis=1),  # [image, neuron_layer, d_embed]
        }


# ---- verify --model M --neurons SPEC ----


@torch.no_grad()
def verify_model_neurons(lm, weights, pixels, layers: list[int], n_check: int = 8) -> dict:
    """Factorised effects vs the brute-force propagation through the model's own modules, for
    `n_check` evenly spaced neurons of each layer and for the sum over all of a layer's neurons
    (vs its whole write). Errors relative to the largest brute-force effect norm."""
    cap, ncap = capture_neurons(lm, pixels, [], layers)
    std = (cap.resid.float().var(-1, unbiased=False) + weights.ln_post_eps).sqrt()
    per_layer, worst, worst_sum = {}, 0.0, 0.0
    for l in layers:
        w_proj = mlp_proj_weight(lm, l).float()
        nb = so.neuron_bases(weights, w_proj, l)
        c = so.coefficients(weights, cap.attn_in, ncap.ln_std, ncap.acts[l].float(), nb.later)
        n = nb.n_neurons
        check = sorted({round(i * (n - 1) / max(1, n_check - 1)) for i in range(n_check)})
        ours = so.effects(c, std, nb, check)
        brute = torch.stack(
            [propagate_write(lm, cap, ncap.ln_std, l, ncap.acts[l][..., j, None] * w_proj[:, j])
             for j in check],
            dim=1,
        )  # fmt: skip
        err = float((ours - brute).abs().max() / brute.norm(dim=-1).max().clamp_min(1e-30))
        summed = torch.einsum("ilhn,lhnk->ilhk", c, nb.u)
        summed = torch.einsum("ilhk,lhke->ie", summed, nb.basis) / std[:, None]
        whole = propagate_write(lm, cap, ncap.ln_std, l, ncap.written[l].float())
        err_sum = float((summed - whole).abs().max() / whole.norm(dim=-1).max().clamp_min(1e-30))
        per_layer[str(l)] = {
            "neurons_checked": check,
            "neuron_relative_error": err,
            "sum_relative_error": err_sum,
            "max_effect_norm": float(brute.norm(dim=-1).max()),
        }
        worst, worst_sum = max(worst, err), max(worst_sum, err_sum)
    return {
        "neuron_layers": format_layers(layers, weights.n_layers),
        "neuron_relative_error": worst,
        "neuron_sum_relative_error": worst_sum,
        "per_layer": per_layer,
    }


# ---- reading the stored lens ----


class StoredNeurons:
    """The neuron arrays of an open store (`StoreReader`), per neuron layer.

    `k(layer, a, b)`: [image, neuron, K] float32 frame coordinates of images a..b;
    `frame(layer, neurons)`: Q_n [neuron, K, d_embed] so that effect = k @ Q_n."""

    def __init__(self, reader, spec=None):
        self.r = reader
        info = reader.info
        self.layers = [int(x) for x in (info.get("neuron_layers") or [])]
        self.n_layers, self.n_heads = int(info["n_layers"]), int(info["n_heads"])
        if not self.layers:
            raise UserError(
                f"{reader.path} was built without neurons; rebuild it with: "
                f"{_rebuild(reader)} --neurons {spec or 'L-L'}"
            )
        if spec is not None:
            asked = parse_neuron_layers(spec, self.n_layers)
            missing = [l for l in asked if l not in self.layers]
            if missing:
                raise UserError(
                    f"--neurons {spec!r}: layers {missing} were not built in {reader.path} (built:"
                    f" {format_layers(self.layers, self.n_layers)}); rebuild it with: "
                    f"{_rebuild(reader)} --neurons {format_layers(sorted(set(self.layers) | set(asked)), self.n_layers)}"
                )
            self.chosen = asked
        else:
            self.chosen = list(self.layers)
        self.ks = [(self.n_layers - 1 - l) * self.n_heads for l in self.layers]
        self.offsets = np.concatenate([[0], np.cumsum(self.ks)]).astype(int)
        self.first = self.layers[0]
        self._const: dict | None = None

    def n_paths(self, layer: int) -> int:
        return self.ks[self.layers.index(layer)]

    @property
    def n_neurons(self) -> int:
        return int(self.r.lazy("neuron_scale").shape[2])

    def constants(self) -> dict[str, np.ndarray]:
        if self._const is None:
            self._const = {k: self.r.array(k) for k in ("neuron_u", "neuron_basis", "neuron_chol")}
        return self._const

    def path_maps(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u [K, neuron, d_head], basis [K, d_head, d_embed], chol [neuron, K, K]) of `layer`."""
        i = self.layers.index(layer)
        c = self.constants()
        k = self.ks[i]
        u = c["neuron_u"][self.offsets[i] : self.offsets[i] + k]
        later0 = layer + 1 - (self.first + 1)
        basis = c["neuron_basis"][later0:]  # [later, head, d_head, d_embed]
        basis = basis.reshape(-1, *basis.shape[2:])  # (later, head) row-major -> [K, ...]
        return u, basis, c["neuron_chol"][i, :, :k, :k]

    def q(self, layer: int, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored form of images a..b: (q [image, K, neuron] int8, scale [image, neuron])."""
        i = self.layers.index(layer)
        q = self.r.lazy("neuron_coord")[a:b, self.offsets[i] : self.offsets[i] + self.ks[i]]
        return q, self.r.lazy("neuron_scale")[a:b, i]

    def directions(self, layer: int, v: np.ndarray, neurons=None) -> np.ndarray:
        """Frame vectors v [neuron, K] -> d_embed [neuron, d_embed] (v_n @ Q_n) without forming
        Q: w_n = L_n⁻ᵀ v_n, then Σ_k w_n[k] u[k, n] @ basis[k] as one [neuron, K·d_head] @
        [K·d_head, d_embed] matmul."""
        u, basis, chol = self.path_maps(layer)
        idx = slice(None) if neurons is None else np.asarray(list(neurons), dtype=int)
        lt = torch.from_numpy(chol[idx]).double().transpose(1, 2)  # L_nᵀ, upper
        w = torch.linalg.solve_triangular(lt, torch.from_numpy(v).double()[..., None], upper=True)
        wu = w[..., 0].T[:, :, None] * torch.from_numpy(u[:, idx]).double()  # [K, neuron, d_head]
        wu = wu.transpose(0, 1).reshape(wu.shape[1], -1)  # [neuron, K·d_head]
        return (wu @ torch.from_numpy(basis).double().flatten(0, 1)).float().numpy()

    def k(self, layer: int, a: int, b: int) -> np.ndarray:
        i = self.layers.index(layer)
        q = self.r.lazy("neuron_coord")[a:b, self.offsets[i] : self.offsets[i] + self.ks[i]]
        scale = self.r.lazy("neuron_scale")[a:b, i]
        return so.dequantise(q, scale)

    def frame(self, layer: int, neurons=None) -> np.ndarray:
        """Q_n [neuron, K, d_embed] (float32) for `neurons` (default all)."""
        u, basis, chol = self.path_maps(layer)
        idx = slice(None) if neurons is None else np.asarray(list(neurons), dtype=int)
        e = np.einsum("knd,kde->nke", u[:, idx], basis, optimize=True)  # [neuron, K, d_embed]
        q = torch.linalg.solve_triangular(
            torch.from_numpy(chol[idx]).double(), torch.from_numpy(e).double(), upper=False
        )
        return q.float().numpy()


def _rebuild(reader) -> str:
    try:
        return reader.rebuild_command().rsplit(" --store", 1)[0] + f" --store {reader.path}"
    except Exception:  # noqa: BLE001 - a message, never a failure of its own
        return f"python -m engine build --model MODEL --images IMAGES --store {reader.path}"


def verify_store_neurons(reader) -> dict | None:
    """Sum each image's stored neuron effects (int8 coordinates) per neuron layer and compare with
    the stored `neuron_total` (the layer's write propagated without the factorisation), against
    the int8 bound Σ_n (scale / 2 + 127·2⁻²⁵) √K plus 1e-5 (‖total‖ + Σ_n ‖k_n‖) for fp32.
    None when the store has no neurons."""
    layers = [int(x) for x in (reader.info.get("neuron_layers") or [])]
    if not layers:
        return None
    sn = StoredNeurons(reader)
    n = int(reader.info["n_images"])
    step = int(reader.info.get("image_chunk") or 1024)
    worst_ratio, worst_image, max_abs, max_norm = 0.0, -1, 0.0, 0.0
    for li, l in enumerate(layers):
        u, basis, chol = sn.path_maps(l)
        linv = np.linalg.inv(chol.astype(np.float64))  # [neuron, K, K]
        for a in range(0, n, step):
            b = min(n, a + step)
            k = sn.k(l, a, b).astype(np.float64)  # [image, neuron, K]
            c = np.einsum("ink,nkj->inj", k, linv, optimize=True)  # c / std
            s = np.einsum("inj,jnd->ijd", c, u, optimize=True)  # Σ_n: [image, K, d_head]
            eff = np.einsum("ijd,jde->ie", s, basis, optimize=True)
            total = reader.lazy("neuron_total")[a:b, li].astype(np.float64)
            err = np.linalg.norm(eff - total, axis=1)
            scale = reader.lazy("neuron_scale")[a:b, li]
            knorm = np.linalg.norm(k, axis=2).sum(axis=1)
            tnorm = np.linalg.norm(total, axis=1)
            bound = so.quantisation_bound(scale, k.shape[2]).sum(axis=1) + 1e-5 * (tnorm + knorm)
            ratio = err / np.maximum(bound, 1e-30)
            j = int(np.argmax(ratio))
            if ratio[j] > worst_ratio:
                worst_ratio, worst_image = float(ratio[j]), a + j
            max_abs = max(max_abs, float(np.abs(eff - total).max()))
            max_norm = max(max_norm, float(tnorm.max()))
    return {
        "neuron_layers": layers,
        "neuron_relative_error": max_abs / max(max_norm, 1e-30),
        "neuron_worst_error_over_bound": worst_ratio,
        "neuron_worst_image": worst_image,
        "neuron_ok": bool(worst_ratio <= 1.0),
    }
