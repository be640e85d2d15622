"""Why neuron labels missed the demo world's ground truth, and what names it (docs/interpretation.md,
"Neurons"): for every neuron with η² >= 0.5 for one planted factor, the label each rule gives,
counted against that factor. Rules on the *written* direction (OMP words, category energies, the
oracle factor contrast) against the *response* (engine.core.neuron_labels). The factor codes are
read only to count (and by the oracle row, which is a diagnosis, not a labeller).

    python scripts/eval_neuron_labels.py --store /tmp/demo [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core import labels as lb  # noqa: E402
from engine.core import neuron_analysis as na  # noqa: E402
from engine.core import neuron_labels as nl  # noqa: E402
from engine.pipeline.neurons import StoredNeurons  # noqa: E402
from engine.session import StoreSession  # noqa: E402
from engine.sources import banks  # noqa: E402
from engine.sources.world import FACTORS  # noqa: E402


def omp_rule(direction, atoms, cats, sign=1.0, signed=True):
    c = na.sparse_text(sign * direction[None], atoms, lb.TOP_K)[0]
    nz = np.flatnonzero(c > 0 if signed else c != 0)
    nz = nz[np.argsort(-np.abs(c[nz]), kind="stable")]
    return lb.offline_label([cats[i] for i in nz], np.abs(c[nz]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with StoreSession.open(args.store) as s:
        names, codes = s.reader.factors()
        b = banks.load_bank("world")
        emb = np.asarray(s.text_embeddings(b.texts, progress=False), dtype=np.float64)
        sn = StoredNeurons(s.reader)
        x = s.reader.output().astype(np.float64)
        n = x.shape[0]
        layers = {l: (sn.k(l, 0, n), sn.frame(l)) for l in sn.chosen}
    cats = np.array(b.categories)
    atoms = na.text_dictionary(emb)
    sd = (emb - emb.mean(0)).std(0)
    ref = na.text_dictionary((emb - emb.mean(0)) / sd)  # the reference's per-dimension scaling
    within = {f: emb[cats == f] - emb[cats == f].mean(0) for f in names}
    protos = {}  # each factor's value-contrast subspace (oracle row only)
    for f in names:
        p = [emb[[i for i in np.flatnonzero(cats == f) if re.search(rf"\b{v}\b", b.texts[i])]].mean(0)
             for v in FACTORS[f]]  # fmt: skip
        protos[f] = np.linalg.svd(np.array(p).T - np.mean(p, 0)[:, None], full_matrices=False)[0][
            :, : len(p) - 1
        ]
    xh = x / np.linalg.norm(x, axis=1, keepdims=True)
    xh -= xh.mean(0)

    def energy(vec_or_cov):
        s_ = vec_or_cov if vec_or_cov.ndim == 2 else np.outer(vec_or_cov, vec_or_cov)
        sc = {f: np.trace(within[f] @ s_ @ within[f].T) / (within[f] ** 2).sum() for f in names}
        return max(sc, key=sc.get)

    rules = ["omp5 (previous)", "omp5 any sign", "omp5 flipped", "omp5 reference dictionary",
             "category energy", "category energy, top-100 subspace", "best text",
             "oracle factor contrast", "response", "response, top-100 only"]  # fmt: skip
    hits = dict.fromkeys(rules, 0)
    clear_total = 0
    for k, q in layers.values():
        kc = k - k.mean(0)  # [image, neuron, K]
        eta = np.stack([[_eta2(kc[:, j], codes[:, f]) for f in range(len(names))]
                        for j in range(k.shape[1])])  # fmt: skip
        for j in np.flatnonzero(eta.max(1) >= 0.5):
            clear_total += 1
            truth = names[int(eta[j].argmax())]
            top = np.argsort(-np.linalg.norm(kc[:, j], axis=1))[:100]
            v = na.principal_directions(kc[top, j][:, None])[0]  # [K]
            d = v @ q[j]
            d /= np.linalg.norm(d)
            eff_top = kc[top, j] @ q[j]  # [top, d_embed]
            f = int(eta[j].argmax())
            eff = kc[:, j] @ q[j]
            g = np.stack([eff[codes[:, f] == c].mean(0) for c in range(codes[:, f].max() + 1)])
            orc = {h: np.linalg.norm(g @ protos[h]) ** 2 for h in names}
            dr = d / sd
            cs = atoms @ d
            best = next(cats[i] for i in np.argsort(-np.abs(cs)) if cats[i] != "distractor")
            p = kc[:, j] @ v
            resp = (p @ xh)[None]
            ptop = kc[top, j] @ v
            resp_top = (ptop @ xh[top])[None]
            got = {
                "omp5 (previous)": omp_rule(d, atoms, cats),
                "omp5 any sign": omp_rule(d, atoms, cats, signed=False),
                "omp5 flipped": omp_rule(d, atoms, cats, sign=-1.0),
                "omp5 reference dictionary": omp_rule(dr / np.linalg.norm(dr), ref, cats),
                "category energy": energy(d),
                "category energy, top-100 subspace": energy(eff_top.T @ eff_top),
                "best text": best,
                "oracle factor contrast": max(orc, key=orc.get),
                "response": nl.response_labels(*nl.response_texts(resp, atoms), list(cats))[0],
                "response, top-100 only": nl.response_labels(
                    *nl.response_texts(resp_top, atoms), list(cats)
                )[0],
            }
            for r in rules:
                hits[r] += got[r] == truth
    out = {"clear": clear_total, "matched": hits}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"| rule | clear neurons labelled with their factor (of {clear_total}) |\n|---|---|")
    for r in rules:
        print(f"| {r} | {hits[r]} |")


def _eta2(kc, codes):
    """η² of one factor for one neuron's centred effect coordinates kc [image, K]."""
    total = (kc**2).sum()
    between = sum(
        (codes == c).sum() * (kc[codes == c].mean(0) ** 2).sum() for c in np.unique(codes)
    )
    return between / max(total, 1e-30)


if __name__ == "__main__":
    main()
