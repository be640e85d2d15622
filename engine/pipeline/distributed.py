"""The Ray executor: the build's missing chunks run on a pool of Ray actors, then the driver
finalises.

Each actor plans the build itself (so loads the model once, not per chunk) and runs
`run_chunk(plan, k)` for the chunks the pool hands it; the arrays and records go straight to the
staging folder, which must be on storage every node sees. Chunks are idempotent (a rerun rewrites
the same whole shard), so Ray's own fault tolerance is enough: a killed actor is restarted
(`max_restarts`) and its unfinished tasks are retried (`max_task_retries`). The driver shows one
progress bar over all workers and finalises under the store lock (`engine.pipeline.finalise`).
Killed, the driver's rerun computes only the chunks without a record.

`ray` is an optional dependency (`pip install -e .[distributed]`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import store
from engine.errors import UserError
from engine.pipeline.build import open_staging, progress_bar, run_chunk, write_constants
from engine.pipeline.build_plan import BuildParams, BuildResult, plan_build
from engine.pipeline.finalise import finalise, published_result

MAX_RESTARTS = 4  # per actor: a killed worker process comes back this many times
MAX_TASK_RETRIES = 4  # per chunk: retried on a restarted actor


@dataclass
class RayOptions:
    address: str | None = None  # an existing cluster ("auto", "ray://host:10001", ...); None: local
    num_workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    local_cpus: int | None = None  # CPUs of a local cluster started here (None: num_workers)
    # torch intra-op threads per actor; None: the driver's own count, i.e. what a single-process
    # build on the driver's machine uses. On some CPUs (seen on AMD EPYC) a matmul's reduction
    # order depends on the thread count, so only equal counts give the single build's bits.
    threads_per_worker: int | None = None


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(
            "--executor ray needs Ray, which is not installed: pip install -e '.[distributed]'"
        ) from None
    return ray


class ChunkWorker:
    """A Ray actor: one model, any number of chunks."""

    def __init__(self, params: BuildParams, threads: int):
        self.plan = plan_build(params)
        torch.set_num_threads(max(1, int(threads)))  # Ray sets OMP_NUM_THREADS=1 in actors

    def write_constants(self) -> None:
        write_constants(self.plan)

    def run(self, k: int) -> dict:
        rec = run_chunk(self.plan, k)
        return {"k": k, "n": rec["n"], "items": rec["stop"] - rec["start"], "pid": rec["pid"]}

    def pid(self) -> int:
        return os.getpid()


def build_with_ray(params: BuildParams, opts: RayOptions) -> BuildResult:
    """Build `params.store` with the missing chunks computed by a Ray actor pool."""
    ray = import_ray()
    if opts.num_workers < 1:
        raise UserError(f"bad --num-workers {opts.num_workers}: must be >= 1")
    if opts.gpus_per_worker < 0:
        raise UserError(f"bad --gpus-per-worker {opts.gpus_per_worker}: must be >= 0")
    if opts.gpus_per_worker > 0 and not params.device.startswith("cuda"):
        raise UserError("--gpus-per-worker needs --device cuda (the workers' device)")
    worker_threads(opts)  # a bad --threads-per-worker fails before Ray starts
    t_start = time.perf_counter()
    plan = plan_build(params, load_device="cpu")  # the driver plans and finalises, on CPU
    if not params.force and (res := published_result(plan)) is not None:
        return res
    same_device = torch.device(params.device).type == "cpu"  # the driver's model is on CPU
    state = open_staging(plan, constants=same_device)
    if state is None:
        return published_result(plan) or finalise(plan)
    recorded = store.recorded_chunks(plan.staging)
    todo = [k for k in range(plan.n_chunks) if k not in recorded]
    timings: dict = {"setup_s": time.perf_counter() - t_start}
    if todo:
        started = _init(ray, opts)
        try:
            timings["ray_start_s"] = time.perf_counter() - t_start - timings["setup_s"]
            timings.update(_run_pool(ray, plan, params, opts, todo))
        except ray.exceptions.RayError as e:
            raise worker_error(e) from e
        finally:
            if started:
                ray.shutdown()
    timings = {k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()}
    timings["executor"] = f"ray:{opts.num_workers}"
    res = finalise(plan, timings, resumed=len(recorded))
    res.chunks_done = len(todo)
    if not res.up_to_date:
        res.timings["wall_s"] = round(time.perf_counter() - t_start, 3)
    return res


def worker_error(e: BaseException) -> UserError:
    """A worker's failure as the CLI's one line: a worker's own UserError (bad input, a failed
    reconstruction check) keeps its message; anything else names its last line. The finished
    chunks are recorded, so the same command resumes."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, UserError):
        return UserError(str(cause))
    lines = [ln for ln in str(cause if cause is not None else e).strip().splitlines() if ln]
    last = lines[-1][:300] if lines else type(e).__name__
    return UserError(f"a Ray worker failed ({last}); rerun the same command to resume")


def _init(ray, opts: RayOptions) -> bool:
    """Connect to the cluster at `opts.address`, or start a light local one; True if started."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
    if opts.address:
        ray.init(address=opts.address, log_to_driver=False)
        return True
    root = str(Path(__file__).resolve().parents[2])  # local workers import this checkout
    path = os.environ.get("PYTHONPATH", "")
    if root not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    ray.init(
        num_cpus=opts.local_cpus or max(1, int(opts.num_workers * opts.cpus_per_worker)),
        num_gpus=None if opts.gpus_per_worker else 0,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",  # local only: nothing listens beyond loopback
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def worker_threads(opts: RayOptions) -> int:
    """Each actor's torch thread count: `opts.threads_per_worker`, else the driver's."""
    if opts.threads_per_worker is not None:
        if opts.threads_per_worker < 1:
            raise UserError(f"bad --threads-per-worker {opts.threads_per_worker}: must be >= 1")
        return int(opts.threads_per_worker)
    return max(1, torch.get_num_threads())


def _run_pool(ray, plan, params: BuildParams, opts: RayOptions, todo: list[int]) -> dict:
    from ray.util import ActorPool

    actor = ray.remote(
        num_cpus=opts.cpus_per_worker,
        num_gpus=opts.gpus_per_worker,
        max_restarts=MAX_RESTARTS,
        max_task_retries=MAX_TASK_RETRIES,
    )(ChunkWorker)
    threads = worker_threads(opts)
    workers = [actor.remote(params, threads) for _ in range(min(opts.num_workers, len(todo)))]
    if not (store.load_build_state(plan.staging) or {}).get("constants", True):
        ray.get(workers[0].write_constants.remote())  # from a model on the build's device
    pool = ActorPool(workers)
    bar = progress_bar(params.progress, plan.source.n_items, plan)
    if bar is not None:
        bar.update(plan.source.n_items - sum(len(plan.chunk_range(k)) for k in todo))
    t0 = time.perf_counter()
    n_new = 0
    for out in pool.map_unordered(lambda a, k: a.run.remote(k), todo):
        n_new += out["n"]
        if bar is not None:
            bar.update(out["items"])
    if bar is not None:
        bar.close()
    stream_s = time.perf_counter() - t0
    for w in workers:
        ray.kill(w)
    return {
        "stream_s": stream_s,
        "images_this_attempt": n_new,
        "images_per_s": round(n_new / stream_s, 3) if stream_s > 0 else None,
    }
