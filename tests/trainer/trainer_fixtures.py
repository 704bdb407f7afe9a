"""Test data for the trainer tests: real image-caption pairs from ../shared/data (read in place)
as shard samples in pipelines/image_text.py's layout, and chat-format SFT samples as
pipelines/reasoning.py writes them."""

from __future__ import annotations

import json
from pathlib import Path

from curation import shards

COCO = "image_caption/coco_mini"
TUX = "image_caption/tuxpaint_stamps"


def caption_rows(shared_data: Path, n_coco: int, n_tux: int) -> list[dict]:
    """Real image-caption pairs: COCO photos (first caption) and Tux Paint stamps (RGBA png)."""
    rows = []
    with open(shared_data / COCO / "captions.jsonl") as f:
        for line in list(f)[:n_coco]:
            r = json.loads(line)
            rows.append({"path": shared_data / COCO / r["image"], "caption": r["captions"][0], "id": f"coco{r['coco_id']}"})
    with open(shared_data / TUX / "captions.jsonl") as f:
        for i, line in enumerate(list(f)[:n_tux]):
            r = json.loads(line)
            rows.append({"path": shared_data / TUX / r["image"], "caption": r["caption"], "id": f"tux{i}"})
    return rows


def caption_sample(row: dict) -> shards.Sample:
    """A sample as pipelines/image_text.py's _sample_for_shard writes it: <ext>, txt, json."""
    path: Path = row["path"]
    ext = {"jpeg": "jpg"}.get(path.suffix[1:].lower(), path.suffix[1:].lower())
    meta = {"id": row["id"], "caption": row["caption"]}
    return shards.Sample(key=row["id"], fields={ext: path.read_bytes(), "txt": row["caption"].encode(),
                                                "json": json.dumps(meta, sort_keys=True).encode()},
                         metadata={"caption": row["caption"]})


SFT_SAMPLES = [
    {"id": "sft0", "messages": [
        {"role": "system", "content": "Think step by step inside <think>...</think>, then give the final answer as \\boxed{...}."},
        {"role": "user", "content": "If a train travels 60 miles per hour for 3 hours, how far does it travel?"},
        {"role": "assistant", "content": "<think>\n60 * 3 = 180.\n</think>\nThe final answer is \\boxed{180}."}]},
    {"id": "sft1", "messages": [
        {"role": "user", "content": "Solve for y: 3y - 7 = 11."},
        {"role": "assistant", "content": "<think>\n3y = 18, so y = 6.\n</think>\n\\boxed{6}"}]},
    {"id": "sft2", "messages": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6"}]},
]


def sft_sample(obj: dict) -> shards.Sample:
    return shards.Sample(key=obj["id"], fields={"json": json.dumps(obj).encode()}, metadata={"prompt_id": obj["id"]})
