"""Partitions: one dynamic partition per drop under landing/<modality>/ (registered by a sensor)."""

import dagster as dg

from curation import storage as fsio
from pipelines.common import manifest_url

image_text_drops = dg.DynamicPartitionsDefinition(name="image_text_drops")
reasoning_drops = dg.DynamicPartitionsDefinition(name="reasoning_drops")
document_drops = dg.DynamicPartitionsDefinition(name="document_drops")
video_drops = dg.DynamicPartitionsDefinition(name="video_drops")


def ready_partitions(context: dg.AssetExecutionContext, partitions_def: dg.DynamicPartitionsDefinition, root: str,
                     upstream: str) -> list[str]:
    """Registered drops whose ``upstream`` manifest exists (sorted): what a corpus asset reads."""
    keys = sorted(context.instance.get_dynamic_partitions(partitions_def.name))
    ready = [p for p in keys if fsio.exists(manifest_url(root, upstream, p))]
    if not ready:
        raise dg.Failure(f"no partition of {upstream} is materialized yet (registered drops: {keys})")
    return ready
