"""Finalising a build: every chunk recorded -> compact rows -> DuckDB tables -> atomic publication.

Runs with the store lock held (`engine.store.store_lock`), so any number of processes may call it
for the same staging folder (the last `--shard` to finish, `--finalise`, a Ray driver): the first
one publishes, the others find the published store up to date. Missing chunks are refused with
one line naming them.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import asdict

import numpy as np
import pandas as pd

from engine import store
from engine.errors import UserError
from engine.pipeline import provenance
from engine.pipeline.build_plan import BuildPlan, BuildResult


def finalise(plan: BuildPlan, timings: dict | None = None, resumed: int = 0) -> BuildResult:
    """Gather the chunk records into the store database and publish the staging folder."""
    with store.store_lock(plan.link):
        staging = plan.staging
        if not staging.is_dir():  # another process finalised it first, or there is no build
            done = published_result(plan)
            if done is None:
                raise UserError(f"no build in progress for {plan.link} with these parameters")
            return done
        if not (staging / store.BUILD_DIR).is_dir() and (staging / store.schema.STORE_DB).is_file():
            return _publish(plan)  # killed after finishing, before publication
        state = store.load_build_state(staging) or {}
        if not state.get("constants", True):
            raise UserError(f"cannot finalise {plan.link}: the weight-only arrays were never "
                            "written (no worker started); rerun the build")  # fmt: skip
        missing = sorted(set(range(plan.n_chunks)) - store.recorded_chunks(staging))
        if missing:
            raise UserError(missing_message(plan, missing, state.get("shards")))
        parts = [(rec["start"], rec["n"]) for rec in store.iter_chunk_records(staging)]
        n_good = sum(n for _, n in parts)
        if n_good == 0:
            first = next(
                (r["skipped"][0]["reason"] for r in store.iter_chunk_records(staging)), "-"
            )
            raise UserError(
                f"no usable images in {plan.params.images}: all {plan.source.n_items} files were "
                f"skipped (first reason: {first})"
            )
        if n_good < plan.source.n_items:  # skipped files left gaps: make the rows consecutive
            store.compact_rows(staging, parts, plan.sizes())
        timings = {**chunk_timings(staging), **(timings or {})}
        _write_database(plan, state, timings)
        store.finish_staging(staging)
        res = _publish(plan)
        res.resumed_chunks, res.timings = resumed, timings
        return res


def published_result(plan: BuildPlan) -> BuildResult | None:
    """The published store when it already holds this build (same key), else None."""
    if not plan.link.is_symlink():
        return None
    try:
        with store.open_store(plan.link) as r:
            if r.meta.build_key == plan.key:
                return BuildResult(
                    plan.link, r.version_path, r.info["n_images"], 0, up_to_date=True
                )
    except UserError:
        pass  # a broken link: rebuild
    return None


def _publish(plan: BuildPlan) -> BuildResult:
    version = store.publish_locked(plan.link, plan.staging)
    with store.open_store(version) as r:
        return BuildResult(plan.link, version, r.info["n_images"], r.meta.n_skipped)


def missing_message(plan: BuildPlan, missing: list[int], shards: int | None) -> str:
    where = ""
    if shards:
        owners = sorted({k % shards for k in missing})
        where = "; rerun " + ", ".join(f"--shard {i}/{shards}" for i in owners)
    return (
        f"cannot finalise {plan.link}: {len(missing)} of {plan.n_chunks} chunks missing "
        f"(chunks {ranges(missing)}){where}"
    )


def ranges(ks: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    out, start = [], None
    for i, k in enumerate(ks):
        if start is None:
            start = k
        if i + 1 == len(ks) or ks[i + 1] != k + 1:
            out.append(f"{start}" if start == k else f"{start}-{k}")
            start = None
    return ", ".join(out)


def chunk_timings(staging) -> dict:
    """Per-chunk costs summed over the chunk records (whoever computed them)."""
    total = {"chunks": 0, "chunk_decode_wait_s": 0.0, "chunk_compute_s": 0.0, "chunk_write_s": 0.0}
    for rec in store.iter_chunk_records(staging):
        t = rec.get("timings", {})
        total["chunks"] += 1
        for k in ("decode_wait_s", "compute_s", "write_s"):
            total[f"chunk_{k}"] += t.get(k, 0.0)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in total.items()}


def _write_database(plan: BuildPlan, state: dict, timings: dict) -> None:
    lm, params = plan.lm, plan.params
    run_id = state["run_id"]
    params_json = {
        "images": params.images,
        "batch_size": params.batch_size,
        "device": params.device,
        "layers_arg": params.layers,  # as typed; the stored layers are StoreMeta.layers
        "neurons": params.neurons,
        "random_weights": params.random_weights,
        "workers": params.workers,
        "image_chunk": plan.chunk,
        "build_key": plan.key,
        "attempts": state.get("attempts", 1),
    }
    code = provenance.code_version()
    with store.new_database(plan.staging) as db:
        image_set_hash, skipped = _write_images(db, plan, run_id)
        db.set_meta(_store_meta(plan, run_id, code, image_set_hash, len(skipped)))
        db.set_model(_model_record(plan))
        db.record_run(
            store.schema.RunRecord(
                run_id=run_id, kind="build", model_spec=lm.spec, weights_hash=lm.weights_hash,
                code_version=code, image_set_hash=image_set_hash, parameters=params_json,
                timings=timings, started_at=state["started_at"], finished_at=provenance.now(),
                host=socket.gethostname(), skipped_files=skipped,
            )
        )  # fmt: skip


def _store_meta(plan: BuildPlan, run_id, code, image_set_hash, n_skipped) -> store.schema.StoreMeta:
    """The store's metadata record of this build."""
    # worst per-batch max |output - Σ components| / max ||output|| (fp32 compute, before fp16
    # storage) over every chunk; every batch was checked against the tolerance
    worst = max(
        (r.get("reconstruction_error", 0.0) for r in store.iter_chunk_records(plan.staging)),
        default=0.0,
    )
    return store.schema.StoreMeta(
        schema_version=store.schema.SCHEMA_VERSION, layers=tuple(plan.layers),
        image_chunk=plan.chunk, thumb_size=store.schema.THUMB_SIZE,
        images_source=plan.source.describe, built_at=provenance.now(), run_id=run_id,
        code_version=code, build_key=plan.key,
        factors=tuple(plan.source.factors) if plan.source.factors else None,
        image_set_hash=image_set_hash, n_skipped=n_skipped, reconstruction_error=worst,
        reconstruction_tolerance=plan.decomposer().tolerance, random_data=False,
        neuron_layers=tuple(plan.neuron_layers),
        pooling="map" if plan.pooled else "class_token", d_coord=plan.d_coord,
        basis_shared=plan.pooled,
    )  # fmt: skip


def _model_record(plan: BuildPlan) -> store.schema.ModelRecord:
    lm = plan.lm
    return store.schema.ModelRecord(
        model_spec=lm.spec,
        arch=lm.arch,
        weights_hash=lm.weights_hash,
        random_weights=bool(plan.params.random_weights) or lm.weights_hash.startswith("random"),
        tokenizer=str(lm.extra.get("tokenizer") or type(lm.tokenizer).__name__),
        **asdict(lm.dims),
    )


def _write_images(db, plan: BuildPlan, run_id: str) -> tuple[str, list[dict]]:
    """images, image_factors and skipped_files from the chunk records, one chunk at a time.

    Returns (image-set hash over (path, sha256) in image order, skipped files)."""
    factors = plan.source.factors
    h = hashlib.sha256()
    skipped: list[dict] = []
    offset = 0
    for rec in store.iter_chunk_records(plan.staging):
        imgs = rec["images"]
        ids = np.arange(offset, offset + len(imgs), dtype=np.int32)
        db.append(
            "images",
            pd.DataFrame(
                {
                    "image_id": ids,
                    "path": [m["path"] for m in imgs],
                    "sha256": [m["sha256"] for m in imgs],
                    "width": [m["width"] for m in imgs],
                    "height": [m["height"] for m in imgs],
                    "class": pd.Series([m["class"] for m in imgs], dtype=object),
                }
            ),
        )
        if factors and imgs:
            names = list(factors)
            codes = np.array([m["codes"] for m in imgs], dtype=np.int64)  # [image, factor]
            values = np.array(
                [[factors[f][c] for f, c in zip(names, row, strict=True)] for row in codes],
                dtype=object,
            )  # [image, factor]
            db.append(
                "image_factors",
                pd.DataFrame(
                    {
                        "image_id": np.repeat(ids, len(names)),  # image-major, like reshape(-1)
                        "factor": np.tile(np.array(names, dtype=object), len(imgs)),
                        "value_code": codes.reshape(-1),  # [image * factor]
                        "value": values.reshape(-1),
                    }
                ),
            )
        for m in imgs:
            h.update(f"{m['path']}\t{m['sha256']}\n".encode())
        skipped.extend(rec["skipped"])
        offset += len(imgs)
    db.append(
        "skipped_files",
        pd.DataFrame(
            {
                "run_id": [run_id] * len(skipped),
                "path": [s["path"] for s in skipped],
                "reason": [s["reason"] for s in skipped],
            }
        ),
    )
    return h.hexdigest(), skipped
