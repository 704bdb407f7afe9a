"""The Definitions object the workspace loads (workspace.yaml -> assets.definitions)."""

from __future__ import annotations

import dagster as dg

from assets import image_text
from assets.resources import BeamResource, ClipModelResource, StorageResource
from assets.sensors import image_text_drop_sensor, image_text_ingest_job

defs = dg.Definitions(
    assets=image_text.ASSETS,
    jobs=[image_text_ingest_job],
    sensors=[image_text_drop_sensor, dg.AutomationConditionSensorDefinition(
        "image_text_automation", target=dg.AssetSelection.groups("image_text", "decontamination"),
        default_status=dg.DefaultSensorStatus.RUNNING)],
    resources={"storage": StorageResource(), "clip": ClipModelResource(), "beam_runner": BeamResource()},
)
