"""Sensors: every new drop folder under landing/image_text/ becomes a partition and starts ingest."""


import dagster as dg

from assets.partitions import image_text_drops, reasoning_drops
from assets.resources import StorageResource
from pipelines import image_text as pipe
from pipelines import reasoning as reasoning_pipe

image_text_ingest_job = dg.define_asset_job(
    "image_text_ingest",
    selection=dg.AssetSelection.assets("image_text_samples", "image_phash"),
    partitions_def=image_text_drops,
    description="Ingest, validate and hash one drop (downstream assets follow by automation).",
)


@dg.sensor(job=image_text_ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def image_text_drop_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
    """Registers each new folder in landing/image_text/ as a partition and requests its ingest run."""
    known = set(context.instance.get_dynamic_partitions(image_text_drops.name))
    new = [p for p in pipe.list_partitions(storage.root) if p not in known]
    if not new:
        return dg.SensorResult(skip_reason=f"no new drops ({len(known)} known)")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=p, run_key=f"drop:{p}") for p in new],
        dynamic_partitions_requests=[image_text_drops.build_add_request(new)],
    )


reasoning_ingest_job = dg.define_asset_job(
    "reasoning_ingest", selection=dg.AssetSelection.assets("reasoning_prompts"), partitions_def=reasoning_drops,
    description="Load and check the prompts of one drop (sampling and verification follow by automation).")


@dg.sensor(job=reasoning_ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def reasoning_drop_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
    """Registers each new folder in landing/reasoning/ as a partition and requests its prompt run."""
    known = set(context.instance.get_dynamic_partitions(reasoning_drops.name))
    new = [p for p in reasoning_pipe.list_partitions(storage.root) if p not in known]
    if not new:
        return dg.SensorResult(skip_reason=f"no new drops ({len(known)} known)")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=p, run_key=f"drop:{p}") for p in new],
        dynamic_partitions_requests=[reasoning_drops.build_add_request(new)],
    )
