"""Partitions: one dynamic partition per drop under landing/<modality>/ (registered by a sensor)."""

import dagster as dg

image_text_drops = dg.DynamicPartitionsDefinition(name="image_text_drops")
reasoning_drops = dg.DynamicPartitionsDefinition(name="reasoning_drops")
document_drops = dg.DynamicPartitionsDefinition(name="document_drops")
video_drops = dg.DynamicPartitionsDefinition(name="video_drops")
