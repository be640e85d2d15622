# ruff: noqa: E501
"""Colour heads of the demo model: does the synthesized image show the colour its direction favours?

favoured: the object colour with the highest mean projection on the head's direction over the
stored images (ground truth from the world's factors). Measured: saturated pixels (HSV s > 0.35,
v > 0.25) of the image assigned to the nearest palette hue; enrichment = that share divided by
the same share in 16 unoptimised Fourier images (random phases). 'shown' when the favoured
colour's enrichment is the largest of the six.

    .venv/bin/python scripts/eval_visualise_colours.py artifacts/demo   # after visualise
"""

import colorsys
import io
import json
import sys

import numpy as np
import torch
from PIL import Image

from engine.core import visualise as vis
from engine.sources import world
from engine.store import open_store
from engine.store import unit_tables as ut

names = world.FACTORS["colour"]
hues = np.array([colorsys.rgb_to_hsv(*(np.array(world._COLOUR_RGB[c]) / 255))[0] for c in names])


def shares(img):  # img float [N, 3] in 0..1
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in img])
    sat = hsv[(hsv[:, 1] > 0.35) & (hsv[:, 2] > 0.25)]
    d = np.abs(sat[:, :1] - hues[None])
    d = np.minimum(d, 1 - d)
    return np.bincount(d.argmin(1), minlength=6) / max(len(sat), 1), len(sat) / len(img)


with torch.no_grad():
    base = np.mean(
        [
            shares(
                vis.FourierImage(64, seed=1000 + i)()[0].permute(1, 2, 0).reshape(-1, 3).numpy()
            )[0]
            for i in range(16)
        ],
        axis=0,
    )
out = []
with open_store(sys.argv[1]) as r:
    fn, codes = r.factors()
    ci = fn.index("colour")
    summ = ut.unit_summary(r).set_index(["layer", "head"])
    gt = r.query("select layer, head, eta2 from ground_truth where is_dominant").set_index(
        ["layer", "head"]
    )
    for row in ut.unit_visualisations(r).itertuples():
        u = np.asarray(summ.loc[(row.layer, row.head), "direction"], np.float32)
        proj = (r.coords(row.layer, row.head) @ r.basis(row.layer, row.head)) @ u
        means = np.array([proj[codes[:, ci] == k].mean() for k in range(6)])
        fav = int(np.argmax(means))
        img = (
            np.asarray(Image.open(io.BytesIO(row.image)).convert("RGB"), np.float32).reshape(-1, 3)
            / 255
        )
        sh, satfrac = shares(img)
        enr = sh / np.maximum(base, 1e-9)
        out.append(
            {
                "unit": row.unit,
                "eta2": round(float(gt.loc[(row.layer, row.head), "eta2"]), 2),
                "favoured": names[fav],
                "most_enriched": names[int(np.argmax(enr))],
                "shown": bool(np.argmax(enr) == fav),
                "favoured_share": round(float(sh[fav]), 3),
                "baseline_share": round(float(base[fav]), 3),
                "enrichment": round(float(enr[fav]), 2),
                "objective": round(row.objective, 3),
                "random": round(row.init_mean, 3),
                "random_sd": round(row.init_sd, 3),
                "store_max": round(row.store_max, 3),
            }
        )
print(
    json.dumps(
        {
            "baseline_shares": dict(zip(names, np.round(base, 3).tolist(), strict=True)),
            "heads": out,
        },
        indent=1,
    )
)
