"""The heads table's segmentation columns come from the latest `segeval` by the runs table's
finish time, not from whichever rows the database returns last."""

import pandas as pd
import pytest

from engine.session import StoreSession
from engine.store import mutate_store, schema
from engine.store.random_store import write_random_store

pytestmark = pytest.mark.unit


def _run(run_id: str, finished: str) -> schema.RunRecord:
    return schema.RunRecord(run_id=run_id, kind="segeval", model_spec="ViT-B-32",
                            weights_hash="random:seed0", code_version="test", image_set_hash=None,
                            parameters={}, timings={}, started_at="2026-01-01T00:00:00",
                            finished_at=finished, host="test")  # fmt: skip


def _scores(run_id: str, heads, miou: float) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": run_id, "scope": "head", "name": f"L{l}H{h}", "layer": l,
                          "head": h, "n_images": 4, "miou": miou, "pointing": miou}
                         for l, h in heads])  # fmt: skip


def test_latest_segeval_is_the_last_finished_run(tmp_path):
    link = tmp_path / "artifacts" / "s"
    link.parent.mkdir()
    write_random_store(link, 8)
    with StoreSession.open(link) as s:
        heads = s.heads()[:3]
    # uuid-like ids whose order says nothing; the later run's rows are written first
    late, early = "0" * 32, "f" * 32
    with mutate_store(link) as w:
        w.append("segmentation_scores", _scores(late, heads, 0.75))
        w.append("segmentation_scores", _scores(early, heads, 0.25))
        w.record_run(_run(early, "2026-01-01T01:00:00"))
        w.record_run(_run(late, "2026-01-01T02:00:00"))
    with StoreSession.open(link) as s:
        df = s.heads_table()
        from engine.session.tables import latest_run_id

        assert latest_run_id(s.reader, "segeval", [early, late]) == late
        assert latest_run_id(s.reader, "segeval", ["x"]) == "x"  # no runs row: the only one
        assert latest_run_id(s.reader, "segeval", ["x", "y"]) is None  # not ordered
    got = df.set_index(["layer", "head"]).loc[heads, "seg_miou"]
    assert (got == 0.75).all()
    assert df["seg_miou"].notna().sum() == len(heads)
