"""Metadata a data engineer wants in the UI: counts, drops by reason, distributions, previews."""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Iterable, Sequence

import dagster as dg
import numpy as np

from curation import storage


def jpeg_data_uri(image, quality: int = 70) -> str:  # noqa: ANN001 - a PIL image
    """A small JPEG as a data URI: previews inline in the UI's markdown, no file to serve."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_image_mismatches(index, keep: int = 3) -> tuple[int, list[str], list]:  # noqa: ANN001 - a ShardIndex
    """Chat-format shards: (samples read, keys whose ``{"type": "image"}`` parts, all turns counted,
    differ from their ``img*`` fields, the first ``keep`` samples for a preview)."""
    import json

    from curation import shards

    bad, first, n = [], [], 0
    for url in index.tar_urls:
        for smp in shards.iter_samples(url):
            n += 1
            messages = json.loads(smp.fields["json"])["messages"]
            want = sum(1 for m in messages if isinstance(m["content"], list) for part in m["content"]
                       if part.get("type") == "image")
            if want != sum(1 for k in smp.fields if k.startswith("img")):
                bad.append(smp.key)
            if len(first) < keep:
                first.append(smp)
    return n, bad, first


def rows(url: str) -> list[dict]:
    return storage.read_records(url) if storage.exists(url) else []


BYTE_COLUMNS = ("frames", "image", "bytes")  # payloads: for the shard writer, never for metadata


def rows_of(urls: Iterable[str], skip: Sequence[str] = BYTE_COLUMNS) -> list[dict]:
    """Rows of several manifests (missing ones count as empty), without their byte columns."""
    out: list[dict] = []
    for url in urls:
        if storage.exists(url):
            table = storage.read_table(url)
            out += table.drop_columns([c for c in skip if c in table.column_names]).to_pylist()
    return out


def run_drops(context: dg.AssetExecutionContext) -> list[str]:
    """The drops of this run, sorted: one, or a whole backfill range (``BackfillPolicy.single_run``:
    one Beam job for all of them, so models load once per worker, not once per drop)."""
    return sorted(context.partition_keys)


def stage_links(res) -> tuple[str, str]:  # noqa: ANN001 - a pipelines.common.StageResult
    """(manifest, quarantine) to link in the UI: the files of a single drop, else their folders."""
    if len(res.partitions) == 1:
        p = res.partitions[0]
        return res.manifests[p], res.quarantines[p]
    return (next(iter(res.manifests.values())).rsplit("/", 1)[0],
            next(iter(res.quarantines.values())).rsplit("/", 1)[0])


def reasons_table(quarantine_rows: Sequence[dict]) -> str:
    """Markdown table of drops by (stage, reason), most frequent first."""
    counts = Counter((r.get("stage") or "", r.get("reason") or "") for r in quarantine_rows)
    if not counts:
        return "_no drops_"
    lines = ["| stage | reason | count |", "|---|---|---:|"]
    for (stage, reason), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {stage} | {reason} | {n} |")
    return "\n".join(lines)


def histogram_table(values: Iterable[float], bins: Sequence[float] | int = 10, label: str = "value") -> str:
    """A text histogram (markdown) that reads well in the Dagster UI."""
    vals = np.asarray(list(values), dtype=np.float64)
    if vals.size == 0:
        return "_empty_"
    counts, edges = np.histogram(vals, bins=bins)
    top = max(int(counts.max()), 1)
    lines = [f"| {label} | count | |", "|---|---:|---|"]
    for c, lo, hi in zip(counts.tolist(), edges[:-1], edges[1:]):
        lines.append(f"| {lo:.3g} – {hi:.3g} | {c} | {'█' * max(0, round(20 * c / top))} |")
    return "\n".join(lines)


def counter_table(counter: Counter | dict, key: str, limit: int = 20, extra: dict | None = None, extra_name: str = "") -> str:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:limit]
    if not items:
        return "_empty_"
    head = f"| {key} | count |" + (f" {extra_name} |" if extra is not None else "")
    lines = [head, "|---|---:|" + ("---:|" if extra is not None else "")]
    for k, v in items:
        lines.append(f"| {k} | {v} |" + (f" {extra.get(k, 0)} |" if extra is not None else ""))
    return "\n".join(lines)


def preview_table(records: Sequence[dict], columns: Sequence[str], limit: int = 8) -> str:
    if not records:
        return "_empty_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records[:limit]:
        cells = []
        for c in columns:
            v = r.get(c)
            text = f"{v:.4f}" if isinstance(v, float) else str(v if v is not None else "")
            cells.append(text.replace("|", "\\|").replace("\n", " ")[:80])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_drop_table(kept: Sequence[dict], dropped: Sequence[dict]) -> str:
    """Records kept and quarantined per drop (``partition``), a markdown table."""
    k = Counter(r.get("partition") for r in kept)
    d = Counter(r.get("partition") for r in dropped)
    lines = ["| drop | kept | quarantined |", "|---|---|---|"]
    lines += [f"| {p} | {k.get(p, 0):,} | {d.get(p, 0):,} |" for p in sorted(set(k) | set(d), key=str)]
    return "\n".join(lines)


def stage_metadata(n_in: int, kept: Sequence[dict], dropped: Sequence[dict], manifest: str, quarantine: str) -> dict:
    """The metadata every stage reports; a run over several drops (a single-run backfill) also gets the
    counts per drop, since Dagster records the same metadata on each of its partitions."""
    md = {
        "records_in": dg.MetadataValue.int(n_in),
        "records_out": dg.MetadataValue.int(len(kept)),
        "records_dropped": dg.MetadataValue.int(len(dropped)),
        "drops_by_reason": dg.MetadataValue.md(reasons_table(dropped)),
        "manifest": dg.MetadataValue.path(manifest),
        "quarantine": dg.MetadataValue.path(quarantine),
    }
    if len({r.get("partition") for r in [*kept, *dropped]}) > 1:
        md["records_by_drop"] = dg.MetadataValue.md(per_drop_table(kept, dropped))
    return md
