"""Feature visualisation: the differentiable objective, the batched maps, and `visualise`."""

import pytest
import torch

from engine.core import units
from engine.core import visualise as vis
from engine.core.decompose import decompose, patch_maps


@pytest.fixture(scope="module")
def tiny():
    from engine.model import capture, load_model, vision_weights

    lm = load_model("tiny-test", random_weights=True)
    w = vision_weights(lm)
    size = lm.dims.image_size
    px = torch.rand(5, 3, size, size, generator=torch.Generator().manual_seed(0))
    layers = list(range(lm.dims.n_layers))
    return lm, w, px, capture(lm, px, layers), layers


@pytest.mark.unit
def test_head_score_and_layer_maps_match_the_decomposition(tiny):
    from engine.model import capture_grad

    lm, w, px, cap, layers = tiny
    dec = decompose(w, cap, layers)
    head_out = dec.head_out  # [image, layer, head, d_embed]
    g = torch.Generator().manual_seed(1)
    for l in layers:
        dirs = torch.randn(w.n_heads, head_out.shape[-1], generator=g)  # [head, d_embed]
        want = torch.einsum("ihe,he->ih", head_out[:, l], dirs)  # [image, head]
        maps, cls = units.layer_maps(w, cap, l, dirs)
        torch.testing.assert_close(maps.sum(-1) + cls, want, rtol=1e-4, atol=1e-5)
        for i in range(px.shape[0]):  # the batched maps are patch_maps, image by image
            for h in range(w.n_heads):
                m = patch_maps(w, cap, i, [l], [h], dirs[h])[0, 0].reshape(-1)
                torch.testing.assert_close(maps[i, h], m, rtol=1e-4, atol=1e-6)
        h = w.n_heads - 1
        torch.testing.assert_close(vis.head_score(w, cap, l, h, dirs[h]), want[:, h], rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
    # gradients reach the pixels through capture_grad
    x = px.clone().requires_grad_(True)
    s = vis.head_score(w, capture_grad(lm, x, [layers[-1]]), layers[-1], 0, dirs[0]).sum()
    s.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


@pytest.mark.unit
def test_fourier_image_keeps_its_magnitude():
    img = vis.FourierImage(32, seed=3)
    x = img().detach()
    assert x.shape == (1, 3, 32, 32) and 0 < float(x.min()) and float(x.max()) < 1
    # the optimised parameters are the phase and the colour offsets; the magnitude is a buffer
    assert {n for n, _ in img.named_parameters()} == {"phase", "colour"}
    m = vis.spectrum_magnitude(32)
    assert float(m.pow(2).mean()) == pytest.approx(1.0) and m[0, 0] == m.max()


@pytest.mark.slow
def test_visualise_cli_rises_above_random_images_and_is_stored(tmp_path, capsys):
    import io
    import json

    from PIL import Image

    from engine.cli import main
    from engine.pipeline.build import BuildParams, build_store
    from engine.store import open_store
    from engine.store import unit_tables as ut

    link = tmp_path / "artifacts" / "t"
    link.parent.mkdir()
    build_store(BuildParams(model="tiny-test", images="synthetic:64", store=str(link),
                            random_weights=True, progress=False, layers="all"))  # fmt: skip
    # before interpret there is no direction to follow: one line, exit 2
    assert main(["visualise", "--store", str(link), "--units", "L2H1"]) == 2
    assert "interpret" in capsys.readouterr().err
    assert main(["interpret", "--store", str(link), "--no-progress", "--no-unit-maps"]) == 0
    capsys.readouterr()
    assert main(["visualise", "--store", str(link), "--units", "L2H1", "--steps", "0"]) == 2
    assert main(["visualise", "--store", str(link), "--units", "mlp"]) == 2
    assert "not a stored head" in capsys.readouterr().err
    args = ["visualise", "--store", str(link), "--units", "L2H1,L1H0", "--steps", "64",
            "--no-progress", "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["unit"] for o in out] == ["L1H0", "L2H1"]
    with open_store(link) as r:
        v = ut.unit_visualisations(r).set_index("unit")
        size = r.info["image_size"]
    for unit in ("L1H0", "L2H1"):
        row = v.loc[unit]
        # far above both kinds of random image on the same objective
        assert row.objective > row.init_mean + 5 * row.init_sd
        assert row.objective > row.noise_mean + 5 * row.noise_sd
        assert Image.open(io.BytesIO(row.image)).size == (size, size)
        assert json.loads(row.parameters)["steps"] == 64
    # a second run replaces only its own heads
    assert main(["visualise", "--store", str(link), "--units", "L1H0", "--steps", "8",
                 "--no-progress"]) == 0  # fmt: skip
    with open_store(link) as r:
        v = ut.unit_visualisations(r).set_index("unit")
    assert len(v) == 2 and json.loads(v.loc["L1H0", "parameters"])["steps"] == 8
