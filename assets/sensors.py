"""Sensors: every new drop folder under landing/<track>/ becomes a partition and starts its first run."""

from collections.abc import Callable

import dagster as dg

from assets import documents as documents_assets
from assets import video as video_assets
from assets.partitions import document_drops, image_text_drops, reasoning_drops, video_drops
from assets.resources import StorageResource
from pipelines import documents as documents_pipe
from pipelines import image_text as pipe
from pipelines import reasoning as reasoning_pipe
from pipelines import video as video_pipe

image_text_ingest_job = dg.define_asset_job(
    "image_text_ingest",
    selection=dg.AssetSelection.assets("image_text_samples", "image_phash"),
    partitions_def=image_text_drops,
    description="Ingest, validate and hash one drop (downstream assets follow by automation).",
)
reasoning_ingest_job = dg.define_asset_job(
    "reasoning_ingest", selection=dg.AssetSelection.assets("reasoning_prompts"), partitions_def=reasoning_drops,
    description="Load and check the prompts of one drop (sampling and verification follow by automation).")


def drop_sensor(name: str, job, partitions_def: dg.DynamicPartitionsDefinition,  # noqa: ANN001 - an asset job
                list_drops: Callable[[str], list[str]], track: str) -> dg.SensorDefinition:
    """A sensor that registers each new folder of landing/<track>/ as a partition and requests its run."""

    @dg.sensor(name=name, job=job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Registers each new folder in landing/{track}/ as a partition and requests its first run.")
    def _sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
        known = set(context.instance.get_dynamic_partitions(partitions_def.name))
        new = [p for p in list_drops(storage.root) if p not in known]
        if not new:
            return dg.SensorResult(skip_reason=f"no new drops ({len(known)} known)")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=p, run_key=f"drop:{p}") for p in new],
            dynamic_partitions_requests=[partitions_def.build_add_request(new)],
        )

    return _sensor


image_text_drop_sensor = drop_sensor("image_text_drop_sensor", image_text_ingest_job, image_text_drops,
                                     pipe.list_partitions, "image_text")
reasoning_drop_sensor = drop_sensor("reasoning_drop_sensor", reasoning_ingest_job, reasoning_drops,
                                    reasoning_pipe.list_partitions, "reasoning")

document_ingest_job = dg.define_asset_job(
    "document_ingest", selection=dg.AssetSelection.assets(*documents_assets.INGEST_ASSETS), partitions_def=document_drops,
    description="Parse one drop of PDFs, HTML and WARC files (quality, near-dup and shards follow by automation).")
document_drop_sensor = drop_sensor("document_drop_sensor", document_ingest_job, document_drops,
                                   documents_pipe.list_partitions, "documents")
video_ingest_job = dg.define_asset_job(
    "video_ingest", selection=dg.AssetSelection.assets(*video_assets.INGEST_ASSETS), partitions_def=video_drops,
    description="Probe one drop of videos (near-dup, clips, captions and shards follow by automation).")
video_drop_sensor = drop_sensor("video_drop_sensor", video_ingest_job, video_drops, video_pipe.list_partitions, "video")
