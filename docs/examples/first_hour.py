"""A researcher's first hour with a store, from Python (a notebook works the same way).

    python docs/examples/first_hour.py [STORE]        (default: artifacts/demo)

Build and interpret a store first (`python -m engine demo-store`, or `build` + `interpret`).
Everything below is the notebook API, `engine.open_store`: tables as pandas DataFrames, arrays
as numpy, the dashboard's analyses and `engine ablate` as calls.
"""

from __future__ import annotations

import sys

import numpy as np

from engine import open_store


def main(path: str = "artifacts/demo") -> None:
    with open_store(path) as s:
        print(s)

        # every stored head, with its label and best TextSpan texts (after `interpret`)
        heads = s.heads()
        print(heads[["name", "label", "labeller"]].head(8).to_string(index=False))
        print("labels:", heads["label"].value_counts(dropna=False).to_dict())

        # the stored images, with their class or the demo world's factors
        images = s.images()
        print(images.head(3).to_string(index=False))

        # one head's direct contributions: [image, d_embed] = coordinates @ basis
        name, layer, head = heads.iloc[-1][["name", "layer", "head"]]
        x = s.contributions(layer, head)
        c, b = s.coordinates(layer, head), s.basis(layer, head)
        assert np.allclose(x, c @ b, atol=1e-5)
        print(f"{name}: contributions {x.shape}, coordinates {c.shape}, basis {b.shape}")
        print(s.textspan(layer, head).head(5).to_string(index=False))

        # the five analyses of an image (a stored image id, a file path, or a PIL image)
        print(s.property_neighbours(0, [(layer, head)], k=4).to_string(index=False))
        print(s.head_text_neighbours(name, "a red shape", k=4).to_string(index=False))
        for head_name, ranked in s.head_image_neighbours(0, heads["name"][-2:], k=3).items():
            print(head_name, ranked["image_id"].tolist())
        topic = s.topic_segmentation(0, "a red shape")  # [grid, grid]
        contrast = s.contrastive_segmentation(0, "a red shape", "a blue shape")
        print(f"topic map {topic.shape}, contrast map max {float(np.abs(contrast).max()):.3f}")

        # a causal check: the same computation as `python -m engine ablate --no-write`
        ab = s.ablate(f"{name}", random=3)
        for t in ab.result.tasks:
            print(f"ablate {name}: {t.task} {t.before:.3f} -> {t.after:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
