"""The store session: the store's model verified against its weights hash (for the session and
every command that uses it), the store's heads, and the analyses against brute force."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.core import analysis
from engine.errors import UserError
from engine.pipeline.build import BuildParams, build_store
from engine.session import ImageQuery, StoreSession
from engine.sources import world
from engine.store import mutate_store, open_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    link = tmp_path_factory.mktemp("session") / "artifacts" / "s"
    link.parent.mkdir()
    build_store(BuildParams(model="tiny-test", images="synthetic:48", store=str(link),
                            random_weights=True, progress=False, layers="2"))  # fmt: skip
    return link


@pytest.fixture
def other_weights(store, tmp_path):
    """A copy of the store whose record names other weights than the model spec loads."""
    import shutil

    link = tmp_path / "artifacts" / "other"
    link.parent.mkdir()
    with open_store(store) as r:
        shutil.copytree(r.version_path, tmp_path / "artifacts" / ".other.versions" / "v000001-x")
        record = r.model_record
    (link).symlink_to(".other.versions/v000001-x")
    with mutate_store(link) as w:
        w.set_model(replace(record, weights_hash="sha256:0123456789abcdef"))
    return link


def test_the_session_refuses_a_model_with_other_weights(other_weights):
    with StoreSession.open(other_weights) as s:
        assert s.heads()  # the store itself reads fine
        with pytest.raises(UserError, match="differ from the ones this store was built with"):
            s.model()


@pytest.mark.parametrize(
    "argv",
    [
        ["interpret", "--no-progress"],
        ["ablate", "--ablate", "L2H0", "--no-write"],
        ["segeval", "--masks", "world", "--n-images", "4", "--no-progress"],
    ],
)
def test_every_command_refuses_a_model_with_other_weights(other_weights, argv, capsys):
    assert main([argv[0], "--store", str(other_weights), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert "differ from the ones this store was built with" in err and "\n" not in err


def test_a_random_store_is_analysed_with_its_own_seed(store):
    """Random-weights stores reload at the seed their hash records (not always seed 0)."""
    with StoreSession.open(store) as s:
        lm = s.model()
        assert lm.weights_hash == s.model_record.weights_hash
        assert s.model() is lm  # loaded once


def test_heads_are_the_stored_layers_heads(store):
    with StoreSession.open(store) as s:
        assert s.heads() == [(l, h) for l in s.layers for h in range(s.n_heads)]
        assert len(s.heads()) == len(s.layers) * s.model_record.n_heads
        with pytest.raises(UserError, match="not stored"):
            s.check_heads([(0, 0)])


def test_a_stored_image_decomposed_live_matches_its_stored_contributions(store):
    with StoreSession.open(store) as s:
        i = 5
        stored = s.query_from_store(i)
        img = world.generate(0, 48, seed=0).images[i]  # the same world image the build read
        live = ImageQuery.from_image(Image.fromarray(img))
        heads = s.heads()
        a = s.query_head_out(stored, heads)  # stored rows [head, d_embed]
        b = s.query_head_out(live, heads)  # live decomposition by the verified model
        np.testing.assert_allclose(a, b, atol=2e-3 * np.abs(b).max())
        # the live decomposition sums to the model's output (the store's identity)
        assert s.query_image(live).output.shape == (s.model_record.d_embed,)


def test_analyses_against_brute_force(store):
    with StoreSession.open(store) as s:
        q = s.query_from_store(3)
        heads = s.heads()[:3]
        # 4. head image neighbours: cosine per head over the stored contributions
        for (l, h), rk in zip(heads, s.head_image_neighbours(q, heads, k=5), strict=True):
            x = s.contributions(l, h)  # [image, d_embed]
            cos = x @ x[3] / (np.linalg.norm(x, axis=1) * np.linalg.norm(x[3]) + 1e-12)
            cos[3] = -np.inf  # the query itself is left out
            assert rk.index.tolist() == np.argsort(-cos, kind="stable")[:5].tolist()
        # 1. property neighbours (concat) = mean of the per-head cosines
        rk = s.property_neighbours(q, heads, k=4)
        assert 3 not in rk.index.tolist() and len(rk.index) == 4
        # 5. head text neighbours: head_out · text
        t = s.text_embeddings(["a red shape"])[0]
        x = s.contributions(*heads[0])
        rk = s.head_text_neighbours(heads[0], "a red shape", k=6)
        np.testing.assert_allclose(rk.score, np.sort(x @ t)[::-1][:6], rtol=1e-2, atol=1e-4)
        # 2, 3: the maps of all heads sum (with the class token) to Σ head_out · direction
        m = s.topic_segmentation(q, "a red shape")
        assert m.shape == (s.model_record.grid, s.model_record.grid)
        c = s.contrastive_segmentation(q, "a red shape", "a blue shape", heads=heads)
        assert np.isfinite(c).all()
        with pytest.raises(UserError, match="at least one head"):
            s.property_neighbours(q, [])
        assert isinstance(rk, analysis.Ranking)


def test_ablate_is_one_function_for_the_command_and_the_session(store, capsys):
    import json

    assert main(["ablate", "--store", str(store), "--ablate", "L2H0", "--no-write",
                 "--random", "2", "--json"]) == 0  # fmt: skip
    cli = json.loads(capsys.readouterr().out)
    with StoreSession.open(store) as s:
        a = s.ablate("L2H0", random=2)
    assert [t["after"] for t in cli["tasks"]] == [t.after for t in a.result.tasks]
    assert cli["tasks_source"] == a.tasks_source == "factors"


@pytest.mark.unit
def test_the_dashboard_benchmark_measures_the_session_not_a_copy():
    """bench_dashboard times the session's analyses (what the pages call), not its own
    re-implementation of them (no model, decomposition or ranking code of its own)."""
    import ast
    from pathlib import Path

    src = (Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dashboard.py").read_text()
    fn = next(n for n in ast.walk(ast.parse(src))
              if isinstance(n, ast.FunctionDef) and n.name == "bench_analyses")  # fmt: skip
    calls = {n.func.attr for n in ast.walk(fn) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute)}  # fmt: skip
    analyses = {"property_neighbours", "topic_segmentation", "contrastive_segmentation",
                "head_image_neighbours", "head_text_neighbours"}  # fmt: skip
    assert analyses <= calls
    assert not calls & {"patch_maps", "decompose", "capture", "property_scores", "top_k"}


def test_sessions_share_one_heads_budget(store):
    from engine.store.cache import ByteBudgetCache

    cache = ByteBudgetCache(10**8)
    a = StoreSession.open(store, heads_cache=cache)
    b = StoreSession.open(store, heads_cache=cache)
    hd = a.heads()[0]
    assert b.head_contributions(*hd) is a.head_contributions(*hd)  # one entry per version
    assert len(cache) == 1 and cache.used > 0
    a.close()  # drops this version's entries, the model stays with b
    assert len(cache) == 0 and b.head_contributions(*hd) is not None
    b.close()


def test_a_dashboard_query_is_an_image_query_and_the_analyses_take_it(store):
    """The dashboard's `QueryImage` is the session's `ImageQuery` plus display extras: an upload
    (keyed by its bytes' hash) gets exactly what the same pixels as a plain ImageQuery get."""
    import io

    from dashboard.query import QueryImage
    from dashboard.uploads import query_from_bytes

    img = Image.fromarray(world.generate(0, 48, seed=0).images[7])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    up = query_from_bytes(buf.getvalue(), "upload.png")
    plain = ImageQuery.from_image(img)
    assert isinstance(up, ImageQuery) and isinstance(up, QueryImage) and up.sha != plain.sha
    with StoreSession.open(store) as s:
        assert s.as_query(up) is up
        heads = s.heads()[:3]
        np.testing.assert_array_equal(s.query_head_out(up, heads), s.query_head_out(plain, heads))
        a, b = (s.property_neighbours(q, heads, k=4) for q in (up, plain))
        assert a.index.tolist() == b.index.tolist()
        np.testing.assert_array_equal(
            s.topic_segmentation(up, "a red shape"), s.topic_segmentation(plain, "a red shape")
        )
        stored = s.query_from_store(7)
        shown = QueryImage(stored.image, stored.sha, "stored #7", stored.store_index)
        assert shown.with_duplicate(3).store_index == 7 and isinstance(shown, ImageQuery)
        assert 7 not in s.head_image_neighbours(shown, heads[:1], k=5)[0].index.tolist()
