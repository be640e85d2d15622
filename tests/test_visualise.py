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


@pytest.mark.unit
def test_neuron_score_is_the_lens_effect_and_reaches_the_pixels(tiny):
    """`neuron_score` = the lens's effect · d (`second_order.effects`) on the same image, and its
    gradient reaches the pixels through `capture_neurons_grad`."""
    from engine.core import neuron_maps as nm
    from engine.core import second_order as so
    from engine.model.capture import capture_neurons, capture_neurons_grad, mlp_proj_weight

    lm, w, px, _, _ = tiny
    layer = 0
    nb = so.neuron_bases(w, mlp_proj_weight(lm, layer), layer)
    cap, ncap = capture_neurons(lm, px, [], [layer])
    std = (cap.resid.float().var(-1, unbiased=False) + w.ln_post_eps).sqrt()
    c = so.coefficients(w, cap.attn_in, ncap.ln_std, ncap.acts[layer], nb.later)
    u, basis = nb.u.flatten(0, 1), nb.basis.flatten(0, 1)  # [K, neuron, d_head], [K, d_head, e]
    g = torch.Generator().manual_seed(2)
    for n in (3, 17):
        d = torch.randn(basis.shape[-1], generator=g)
        want = (so.effects(c, std, nb, [n])[:, 0] * d).sum(-1)  # [image]
        gains = nm.path_gains(u[:, n : n + 1], basis, d)[:, 0]  # [K]
        got = vis.neuron_score(w, cap.attn_in, ncap.ln_std, ncap.acts[layer][..., n], std,
                               nb.later, gains)  # fmt: skip
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    x = px.clone().requires_grad_(True)
    gcap, gn = capture_neurons_grad(lm, x, [layer])
    s = (gcap.resid.float().var(-1, unbiased=False) + w.ln_post_eps).sqrt()
    vis.neuron_score(w, gcap.attn_in, gn.ln_std, gn.acts[layer][..., 3], s, nb.later,
                     gains).sum().backward()  # fmt: skip
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


@pytest.mark.slow
@pytest.mark.demo
def test_visualise_neurons_rises_above_random_images_and_is_stored(tmp_path, capsys):
    """On the demo model (trained: at random init some neurons' effects barely respond to the
    image, e.g. tiny-test's L1N195 stays ~4 sd above random Fourier images after 128 steps)."""
    import json

    import pandas as pd

    from engine.cli import main
    from engine.pipeline.build import BuildParams, build_store
    from engine.pipeline.neuron_interpret import run_neuron_interpretation
    from engine.store import open_store
    from engine.store import unit_tables as ut

    link = tmp_path / "artifacts" / "t"
    link.parent.mkdir()
    build_store(BuildParams(model="demo", images="synthetic:48", store=str(link),
                            progress=False, neurons="6-6"))  # fmt: skip
    run_neuron_interpretation(link, None, "world", top=8, n_words=2, progress=False,
                              unit_map_neurons=0)  # fmt: skip
    assert main(["visualise", "--store", str(link), "--units", "L6N99999"]) == 2
    assert "bad neuron spec" in capsys.readouterr().err
    args = ["visualise", "--store", str(link), "--units", "neurons:L6:top:2", "--steps", "32",
            "--no-progress", "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    with open_store(link) as r:
        table = r.table("neuron_stats").sort_values("mean_norm", ascending=False)
        v = ut.unit_visualisations(r).set_index("unit")
        one = ut.unit_visualisation_of(r, out[0]["unit"])
    want = sorted(f"L6N{n}" for n in table.neuron.iloc[:2])
    assert sorted(o["unit"] for o in out) == want and sorted(v.index) == want
    assert len(one) == 1 and one.kind.iloc[0] == "neuron"
    for unit in want:
        row = v.loc[unit]
        assert row.kind == "neuron" and row.neuron == int(unit.split("N")[1])
        assert pd.isna(row["head"])
        assert row.objective > row.init_mean + 5 * row.init_sd
        assert row.objective > row.noise_mean + 5 * row.noise_sd
