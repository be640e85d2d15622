"""Build orchestration: plan -> compute and write chunks -> finalise; streaming and resumable.

`plan_build` (engine.pipeline.build_plan) validates, loads the model and keys an unpublished
staging folder by (model spec, weights hash, image-set fingerprint, parameters); its chunk list
covers the source's items in fixed ranges. `run_chunk(plan, k)` decodes chunk k's items, computes
their rows (`engine.pipeline.compute.compute_batch`) and writes them as one whole Zarr shard,
then records the chunk atomically. `finalise` (engine.pipeline.finalise) gathers the records into
DuckDB and publishes atomically. Only one chunk is held in memory. Killed at any moment, the same
command computes only the chunks without a record; the result equals an uninterrupted build's bit
for bit — and equals a build whose chunks were split between `--shard I/N` processes or Ray
actors (engine.pipeline.distributed), because no chunk depends on another.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from engine import store
from engine.errors import UserError
from engine.pipeline import compute, provenance
from engine.pipeline.build_plan import BuildParams, BuildPlan, BuildResult, plan_build
from engine.pipeline.finalise import finalise, published_result
from engine.sources import collection
from engine.sources.collection import Item

__all__ = [
    "BuildParams",
    "BuildPlan",
    "BuildResult",
    "build_store",
    "finalise_build",
    "open_staging",
    "plan_build",
    "run_chunk",
]


def build_store(
    params: BuildParams,
    *,
    shard: tuple[int, int] | None = None,
    fail_after_chunks: int | None = None,
) -> BuildResult:
    """Build (or resume, or confirm up to date) the store `params.store`.

    shard: (I, N) computes only the chunks k with k % N == I; whichever shard finds every chunk
    recorded when it finishes finalises (under the store lock). Otherwise it returns with
    `published=False`.
    fail_after_chunks: testing hook, raise RuntimeError once that many chunks are recorded.
    """
    t_start = time.perf_counter()
    plan = plan_build(params)
    if not params.force and (res := published_result(plan)) is not None:
        return res
    state = open_staging(plan, shards=shard[1] if shard else None)
    if state is None:  # published meanwhile by another process of this build
        return published_result(plan) or finalise(plan)
    mine = range(plan.n_chunks) if shard is None else range(shard[0], plan.n_chunks, shard[1])
    recorded = store.recorded_chunks(plan.staging)
    todo = [k for k in mine if k not in recorded]
    timings = {"decode_wait_s": 0.0, "compute_s": 0.0, "write_s": 0.0}
    timings["setup_s"] = time.perf_counter() - t_start  # model load, discovery, staging
    t_stream, cpu_stream = time.perf_counter(), time.process_time()
    n_new = _run_chunks(plan, shard, mine, recorded, todo, timings, fail_after_chunks)
    stream_s = time.perf_counter() - t_stream  # decode + decompose + write of every chunk
    timings.update(
        stream_s=stream_s,
        images_this_attempt=n_new,
        images_per_s=round(n_new / stream_s, 3) if stream_s > 0 else None,
    )
    timings = {k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()}
    resumed = sum(1 for k in mine if k in recorded)
    if shard is not None and store.recorded_chunks(plan.staging) != set(range(plan.n_chunks)):
        return BuildResult(
            plan.link, None, n_new, 0, False, resumed, timings, len(todo), False, plan.key,
            plan.n_chunks,
        )  # fmt: skip
    res = finalise(plan, timings, resumed)
    res.chunks_done = len(todo)
    if not res.up_to_date:
        res.timings["wall_s"] = round(time.perf_counter() - t_start, 3)  # model load included
        res.timings["finish_s"] = round(
            res.timings["wall_s"] - timings["setup_s"] - timings["stream_s"], 3
        )
        res.timings["cpu_after_setup_s"] = round(time.process_time() - cpu_stream, 3)
    return res


def _run_chunks(plan, shard, mine, recorded, todo, timings, fail_after_chunks) -> int:
    """Decode, decompose and write the chunks `todo` in order (a progress bar over this
    process's share `mine`); adds each chunk's costs to `timings`; returns the images done."""
    n_new = 0
    with _shard_lock(plan, shard):
        done_items = sum(len(plan.chunk_range(k)) for k in mine if k in recorded)
        bar = progress_bar(plan.params.progress, sum(len(plan.chunk_range(k)) for k in mine), plan)
        if bar is not None:
            bar.update(done_items)
        with ThreadPoolExecutor(plan.params.workers) as pool:
            indices = itertools.chain.from_iterable(plan.chunk_range(k) for k in todo)
            stream = _counted(decode_stream(plan, pool, indices), bar)
            for j, k in enumerate(todo):
                rec = run_chunk(plan, k, stream)
                n_new += rec["n"]
                for name in ("decode_wait_s", "compute_s", "write_s"):
                    timings[name] += rec["timings"][name]
                n_recorded = len(recorded) + j + 1
                if fail_after_chunks is not None and n_recorded >= fail_after_chunks:
                    if j + 1 < len(todo):
                        raise RuntimeError(f"injected failure after {n_recorded} chunks")
        if bar is not None:
            bar.close()
    return n_new


def finalise_build(params: BuildParams) -> BuildResult:
    """`build --finalise`: publish a build whose chunks were all computed by shards or actors."""
    plan = plan_build(params)
    return finalise(plan)


def open_staging(
    plan: BuildPlan, shards: int | None = None, *, constants: bool = True
) -> dict | None:
    """Create or reopen the staging folder (under the store lock); returns the build state, or
    None when the store was published with this key meanwhile (nothing left to do).

    constants: write the weight-only arrays here; False when this process's model is not on the
    build's device (a Ray driver on CPU for GPU workers): a worker writes them (`write_constants`).
    """
    with store.store_lock(plan.link):
        if not plan.params.force and published_result(plan) is not None:
            return None
        staging = plan.staging
        if (staging / store.schema.STORE_DB).is_file() and not (staging / store.BUILD_DIR).exists():
            return None  # finished, not yet published: finalise publishes it
        staging.mkdir(parents=True, exist_ok=True)
        state = store.load_build_state(staging)
        arrays_there = any(
            (staging / name).is_dir() for name in (store.schema.STORE_ZARR, store.SPARSE_ZARR)
        )  # the sparse copy alone: finalise was killed while swapping in the compacted arrays
        if state is None or not arrays_there:
            shutil.rmtree(staging / store.BUILD_DIR, ignore_errors=True)  # records without arrays
            arrays = store.create_arrays(staging, plan.sizes())
            if constants:
                store.write_constants(arrays, plan.decomposer().constants())  # weight-only arrays
            state = {
                "key": plan.key,
                "started_at": provenance.now(),
                "attempts": 0,
                "run_id": uuid.uuid4().hex,
                "constants": constants,
            }
        if shards is not None:
            if state.get("shards") not in (None, shards):
                raise UserError(
                    f"--shard .../{shards} overlaps this build's shards .../{state['shards']} "
                    f"(staging {staging.name}); use the same N for every shard"
                )
            state["shards"] = shards
        state["attempts"] += 1
        store.save_build_state(staging, state)
        return state


def write_constants(plan: BuildPlan) -> None:
    """Write the weight-only arrays from this process's model, unless written already."""
    with store.store_lock(plan.link):
        state = store.load_build_state(plan.staging)
        if state is not None and not state.get("constants", True):
            store.write_constants(plan.arrays(), plan.decomposer().constants())
            state["constants"] = True
            store.save_build_state(plan.staging, state)


def run_chunk(plan: BuildPlan, k: int, items: Iterator[tuple[int, Item]] | None = None) -> dict:
    """Compute chunk k (source items plan.chunk_range(k)) and write it as one whole shard at rows
    [k * chunk, ...), then record it. `items`: a decoded stream positioned at the chunk's first
    item (the next len(range) items are consumed); None decodes here with `params.workers`."""
    rng = plan.chunk_range(k)
    if items is None:
        with ThreadPoolExecutor(plan.params.workers) as pool:
            return run_chunk(plan, k, decode_stream(plan, pool, rng))
    own = itertools.islice(items, len(rng))
    rows = compute.compute_chunk(plan.decomposer(), own, plan.chunk, plan.params.batch_size)
    t0 = time.perf_counter()
    if rows.n:  # the whole shard region (zeros past the good rows): never a read-modify-write
        store.write_rows(plan.arrays(), rng.start, {n: v[: len(rng)] for n, v in rows.rows.items()})
    timings = {**rows.timings, "write_s": time.perf_counter() - t0}
    record = {
        "k": k,
        "start": rng.start,
        "stop": rng.stop,
        "n": rows.n,
        "images": rows.images,
        "skipped": rows.skipped,
        "reconstruction_error": rows.reconstruction_error,
        "timings": {name: round(v, 4) for name, v in timings.items()},
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    store.save_chunk_record(plan.staging, k, record)
    return record


def decode_stream(
    plan: BuildPlan, pool: ThreadPoolExecutor, indices: Iterable[int]
) -> Iterator[tuple[int, Item]]:
    """Decoded items of `indices`, in order, a bounded number ahead in the pool."""
    p = plan.params
    lookahead = max(2 * p.batch_size, 4 * p.workers)
    source, preprocess = plan.source, plan.lm.preprocess
    return collection.ordered_stream(
        pool, lambda i: source.load(i, preprocess, store.schema.THUMB_SIZE), indices, lookahead
    )


def _counted(stream: Iterator, bar) -> Iterator:
    for x in stream:
        if bar is not None:
            bar.update(1)
        yield x


@contextmanager
def _shard_lock(plan: BuildPlan, shard: tuple[int, int] | None) -> Iterator[None]:
    """Refuse a second process running the same shard of the same build at once."""
    if shard is None:
        yield
        return
    path = plan.staging / store.BUILD_DIR / f"shard-{shard[0]}-of-{shard[1]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"--shard {shard[0]}/{shard[1]} of this build is already running elsewhere"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def progress_bar(enabled: bool, total: int, plan: BuildPlan):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=f"build {plan.link.name}", smoothing=0.1)
