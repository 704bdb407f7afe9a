"""The Definitions object the workspace loads (workspace.yaml -> assets.definitions)."""

from __future__ import annotations

import dagster as dg

from assets import documents, image_text, reasoning, training, video
from assets.resources import ENGINE_TAG, BeamResource, ClipModelResource, GenerationResource, StorageResource
from assets.sensors import (
    document_drop_sensor,
    document_ingest_job,
    image_text_drop_sensor,
    image_text_ingest_job,
    reasoning_drop_sensor,
    reasoning_ingest_job,
    video_drop_sensor,
    video_ingest_job,
)

# Independent assets of one run (the tracks' steps, the per-drop and corpus stages that do not depend on each
# other) run in parallel processes; steps tagged as model servers (vLLM engines) run one at a time, so two
# engines never compete for the same accelerator memory.
executor = dg.multiprocess_executor.configured({
    "max_concurrent": 0,  # one process per CPU
    "tag_concurrency_limits": [{"key": k, "value": v, "limit": 1} for k, v in ENGINE_TAG.items()],
})

defs = dg.Definitions(
    executor=executor,
    assets=[*image_text.ASSETS, *reasoning.ASSETS, *documents.ASSETS, *video.ASSETS, *training.ASSETS],
    jobs=[image_text_ingest_job, reasoning_ingest_job, document_ingest_job, video_ingest_job],
    sensors=[
        image_text_drop_sensor,
        reasoning_drop_sensor,
        document_drop_sensor,
        video_drop_sensor,
        dg.AutomationConditionSensorDefinition(
            "curation_automation", target=dg.AssetSelection.groups(
                "image_text", "decontamination", "reasoning", "documents", "video"),
            default_status=dg.DefaultSensorStatus.RUNNING),
        # Training follows new shards only when a user turns this on: a stage is hours of accelerator time.
        dg.AutomationConditionSensorDefinition(
            "training_automation", target=dg.AssetSelection.groups("training"),
            default_status=dg.DefaultSensorStatus.STOPPED),
    ],
    resources={
        "storage": StorageResource(),
        "clip": ClipModelResource(),
        "beam_runner": BeamResource(),
        # 4,096 tokens: eight 448-px frames of a square video are 2,048 image tokens before the prompt
        "vlm": GenerationResource(model="models/tiny-qwen2_5_vl"),
        "reasoning_llm": GenerationResource(model="models/tiny-causal-lm"),
        "trainer": training.TrainerResource(),
    },
)
