"""Scale-out: the same job on ``workers`` Ray Train workers (``TorchTrainer``; DDP, or FSDP).

Every worker builds the job and runs the same loop; Ray Train sets up the process group (gloo on
CPU, NCCL on GPU) and ``prepare_model`` wraps the model. Worker ``r`` of ``W`` takes micro-batches
``r, r + W, ...`` of the shared order, and the loss of a step is normalized by the real tokens of
all workers, so W workers with micro-batch B train like one worker with micro-batch W x B.
Worker 0 writes checkpoints and the model. On a multi-node cluster the run folder must be on
storage every node sees (NFS, or a mounted bucket).
"""

from __future__ import annotations

import json
from pathlib import Path

from trainers.errors import TrainError
from trainers.job import Job, execute

SUMMARY = "summary.json"  # worker 0's summary (Ray Train keeps only metrics with checkpoints)


def _worker(settings: dict) -> None:
    import ray.train
    import ray.train.torch

    job: Job = settings["job"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    def wrap(model):
        return ray.train.torch.prepare_model(model, parallel_strategy=settings["strategy"]) \
            if world > 1 else model

    summary = execute(job, rank, world, device=str(ray.train.torch.get_device()), wrap=wrap)
    if rank == 0:
        (Path(job.work_dir) / SUMMARY).write_text(json.dumps(summary, default=str))


def run_workers(job: Job, workers: int, strategy: str, use_gpu: bool | None) -> dict:
    """Run the job on ``workers`` Ray Train workers; return worker 0's summary."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= workers
    if strategy == "fsdp" and not use_gpu:
        raise TrainError("strategy = \"fsdp\" needs GPU workers (Ray Train shards over NCCL); "
                         "on CPUs use strategy = \"ddp\"")
    storage = Path(job.work_dir) / "ray-train"
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"job": job, "strategy": strategy},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name=job.name, storage_path=str(storage.resolve())),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return json.loads((Path(job.work_dir) / SUMMARY).read_text())
