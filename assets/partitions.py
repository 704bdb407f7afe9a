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


def range_tags(instance: dg.DagsterInstance, partitions_def: dg.DynamicPartitionsDefinition,
               keys: list[str]) -> list[dict[str, str]]:
    """Run tags that make runs materialize ``keys`` together (what a single-run backfill launches): the
    asset sees a whole range in ``context.partition_keys``. One tag set per contiguous range of the
    registered drops (registration order): usually one."""
    registered = instance.get_dynamic_partitions(partitions_def.name)
    unknown = sorted(set(keys) - set(registered))
    if unknown:
        raise ValueError(f"drops {unknown} are not registered as {partitions_def.name} partitions")
    pos = sorted(registered.index(k) for k in set(keys))
    ranges: list[list[int]] = []
    for i in pos:
        if ranges and i == ranges[-1][-1] + 1:
            ranges[-1].append(i)
        else:
            ranges.append([i])
    return [{"dagster/asset_partition_range_start": registered[r[0]],
             "dagster/asset_partition_range_end": registered[r[-1]]} for r in ranges]
