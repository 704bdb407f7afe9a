"""pHash throughput and quality on the real images of ../shared/data.

    python -m bench.bench_phash            # ~1,000 JPEG decodes per variant, best of 3
    python -m bench.bench_phash --quick    # ~200 decodes, 1 round

Speed (README block ``phash``): the real JPEGs (coco_mini train/val, imagededup UKBench photos,
the derived near-dup JPEG variants), read into memory first and repeated to ~1,000 decodes, one
process on one core:

(a) baseline ``imagehash.phash(Image.open(...))`` (full RGB decode, ``convert("L")``, LANCZOS);
(b) draft-decode bound: open + ``draft("L", (DRAFT_SIZE, DRAFT_SIZE))`` + load, no hash;
(c) ``curation.phash.phash_many`` (draft decode + resize + batched DCT) and ``phash_bytes``.

Goals: (c) >= 3x (a), and (c) >= 85% of (b). Agreement of draft hashes with the full-decode
imagehash value is measured on every decodable image of coco_mini, tuxpaint_stamps and near_dup.

Quality (README block ``phash_quality``): Hamming distances on near_dup/derived_coco_mini (40 COCO
originals x 6 exact transformations) and near_dup/groups_real.json; recall per transformation at
k in {4, 6, 8, 10} and the number of cross-group pairs within k (false positives).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from bench.report import machine, markdown_table, write_block
from curation.imaging import sniff_format
from curation.phash import DEFAULT_THRESHOLD, DRAFT_SIZE, hamming, phash_bytes, phash_many

REPO = Path(__file__).resolve().parents[1]
KS = (4, 6, 8, 10)
TRANSFORMS = ("resize50", "jpegq25", "crop85", "hflip", "gray320", "pad_bottom")


def jpeg_bytes(data_dir: Path) -> list[bytes]:
    """The real JPEGs used for speed (sniffed, whatever their extension)."""
    paths = sorted((data_dir / "image_caption/coco_mini/images").rglob("*.jpg"))
    paths += sorted((data_dir / "near_dup/imagededup_tests").rglob("*.*"))
    paths += sorted((data_dir / "near_dup/derived_coco_mini/variants").glob("*.jpg"))
    out = [p.read_bytes() for p in paths if p.is_file()]
    return [d for d in out if sniff_format(d) == "jpeg"]


def image_bytes(data_dir: Path) -> list[bytes]:
    """Every decodable image in coco_mini, tuxpaint_stamps and near_dup (for agreement)."""
    out = []
    for sub in ("image_caption/coco_mini", "image_caption/tuxpaint_stamps", "near_dup"):
        for p in sorted((data_dir / sub).rglob("*")):
            if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp"):
                d = p.read_bytes()
                if sniff_format(d) is not None:
                    out.append(d)
    return out


def imagehash_int(data: bytes) -> int:
    return int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


def draft_agreement(datas: list[bytes], draft_size: int) -> dict[str, float]:
    """How the draft hash differs from the full-decode imagehash value, over JPEGs and over all."""
    full = np.array([imagehash_int(d) for d in datas], dtype=np.uint64)
    fast, errors = phash_many(datas, draft=True, draft_size=draft_size)
    assert not any(errors), errors
    dist = hamming(fast, full)
    jpeg = np.array([sniff_format(d) == "jpeg" for d in datas])
    return {
        "n_all": len(datas),
        "n_jpeg": int(jpeg.sum()),
        "identical_jpeg": float((dist[jpeg] == 0).mean()),
        "mean_jpeg": float(dist[jpeg].mean()),
        "max_jpeg": int(dist[jpeg].max()),
        "identical_all": float((dist == 0).mean()),
        "mean_all": float(dist.mean()),
    }


# -------------------------------------------------------------------------------------- speed


def run_baseline(datas: list[bytes]) -> None:
    for d in datas:
        imagehash.phash(Image.open(io.BytesIO(d)))


def run_draft_bound(datas: list[bytes], draft_size: int = DRAFT_SIZE) -> None:
    for d in datas:
        img = Image.open(io.BytesIO(d))
        img.draft("L", (draft_size, draft_size))
        img.load()


def run_phash_many(datas: list[bytes], draft_size: int = DRAFT_SIZE) -> None:
    _, errors = phash_many(datas, draft_size=draft_size)
    assert not any(errors)


def run_phash_bytes(datas: list[bytes]) -> None:
    for d in datas:
        phash_bytes(d)


def speed(datas: list[bytes], repeats: int) -> dict[str, float]:
    """Images per second of each variant (best of ``repeats`` interleaved rounds)."""
    variants: list[tuple[str, Callable[[list[bytes]], None]]] = [
        ("(a) imagehash.phash(Image.open(...))", run_baseline),
        (f"(b) draft bound: open + draft('L', {DRAFT_SIZE}) + load", run_draft_bound),
        (f"(c) phash_many (draft {DRAFT_SIZE})", run_phash_many),
        (f"(c) phash_bytes loop (draft {DRAFT_SIZE})", run_phash_bytes),
        ("(b') draft bound, draft('L', 32)", lambda ds: run_draft_bound(ds, 32)),
        ("(c') phash_many (draft 32)", lambda ds: run_phash_many(ds, 32)),
    ]
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in variants:
            t0 = time.perf_counter()
            fn(datas)
            dt = time.perf_counter() - t0
            best[name] = min(best.get(name, dt), dt)
    return {name: len(datas) / best[name] for name, _ in variants}


# ------------------------------------------------------------------------------------ quality


def derived_distances(data_dir: Path, draft: bool = True, mirror: bool = False) -> dict[str, list[int]]:
    """Per transformation, the distance original -> variant for the 40 derived groups.

    With ``mirror=True`` the distance is the smaller of (original, variant) and (mirrored original,
    variant): the flip-invariant matching that ``phash_many(mirror=True)`` makes possible.
    """
    root = data_dir / "near_dup/derived_coco_mini"
    groups = [json.loads(line) for line in (root / "groups.jsonl").read_text().splitlines() if line.strip()]
    out: dict[str, list[int]] = {t: [] for t in TRANSFORMS}
    for g in groups:
        paths = [g["original"]] + [g["variants"][t] for t in TRANSFORMS]
        hashes, errors = phash_many([(root / p).read_bytes() for p in paths], draft=draft, mirror=True)
        assert not any(errors), errors
        for t, h in zip(TRANSFORMS, hashes[1:]):
            d = hamming(hashes[0, 0], h[0])
            if mirror:
                d = min(d, hamming(hashes[0, 1], h[0]))
            out[t].append(int(d))
    return out


def all_hashes(data_dir: Path, draft: bool = True) -> list[tuple[str, str, int, int]]:
    """(group, path, hash, mirrored hash) of every derived and real near-dup file that decodes."""
    nd = data_dir / "near_dup"
    items: list[tuple[str, Path]] = []
    for line in (nd / "derived_coco_mini/groups.jsonl").read_text().splitlines():
        if line.strip():
            g = json.loads(line)
            for p in [g["original"], *g["variants"].values()]:
                items.append(("coco:" + g["group"], nd / "derived_coco_mini" / p))
    for g in json.loads((nd / "groups_real.json").read_text()):
        for m in g["members"]:
            items.append((g["group"], nd / m["path"]))
    hashes, errors = phash_many([p.read_bytes() for _, p in items], draft=draft, mirror=True)
    return [
        (grp, str(p.relative_to(nd)), int(h[0]), int(h[1]))
        for (grp, p), h, e in zip(items, hashes, errors)
        if e is None  # ukbench09268_corrupt.jpg is random bytes: unknown_format
    ]


def cross_group_pairs(
    items: list[tuple[str, str, int, int]], k: int, mirror: bool = False
) -> list[tuple[int, str, str]]:
    """Pairs from different groups within distance k (false positives), closest first."""
    groups = np.array([i[0] for i in items])
    plain = np.array([i[2] for i in items], dtype=np.uint64)
    mirrored = np.array([i[3] for i in items], dtype=np.uint64)
    d = hamming(plain[:, None], plain[None, :])
    if mirror:
        d = np.minimum(d, hamming(mirrored[:, None], plain[None, :]))
        d = np.minimum(d, d.T)
    hits = np.triu((groups[:, None] != groups[None, :]) & (d <= k), 1)
    return sorted((int(d[i, j]), items[i][1], items[j][1]) for i, j in zip(*np.nonzero(hits)))


def real_group_distances(data_dir: Path, draft: bool = True) -> list[tuple[str, str, int, int]]:
    """(group, member, distance, mirror-invariant distance) of each member to the group's first."""
    items = all_hashes(data_dir, draft)
    out = []
    for grp in dict.fromkeys(i[0] for i in items if not i[0].startswith("coco:")):
        members = [i for i in items if i[0] == grp]
        for m in members[1:]:
            d = hamming(members[0][2], m[2])
            out.append((grp, m[1], int(d), int(min(d, hamming(members[0][3], m[2])))))
    return out


def quality_body(data_dir: Path) -> str:
    rows = []
    for draft in (True, False):
        for mirror in (False, True):
            dist = derived_distances(data_dir, draft=draft, mirror=mirror)
            for t in TRANSFORMS:
                if mirror and t != "hflip":
                    continue
                d = np.array(dist[t])
                name = t + (" (mirror=True)" if mirror else "")
                rows.append(
                    [name, "draft" if draft else "full (imagehash)"]
                    + [f"{int((d <= k).sum())}/{len(d)}" for k in KS]
                    + [f"{np.median(d):.0f}", f"{d.max()}"]
                )
    items = all_hashes(data_dir, draft=True)
    n_pairs = sum(1 for a, b in itertools.combinations(items, 2) if a[0] != b[0])
    fp_rows = []
    for mirror in (False, True):
        counts = [len(cross_group_pairs(items, k, mirror)) for k in (*KS, 12, 14, 16)]
        closest = cross_group_pairs(items, 64, mirror)[0]
        fp_rows.append(["mirror=True" if mirror else "plain"] + counts + [f"{closest[0]}: {closest[1]} / {closest[2]}"])
    real = real_group_distances(data_dir, draft=True)
    real_rows = [[g, m, d, dm] for g, m, d, dm in real]
    return "\n".join(
        [
            "### pHash near-duplicate quality (`python -m bench.bench_phash`)",
            "",
            "Derived set: 40 COCO val2017 originals, 6 exact transformations each "
            "(`near_dup/derived_coco_mini`); pairs (original, variant) within Hamming distance k. "
            f"Default k = {DEFAULT_THRESHOLD} (imagededup's default).",
            "",
            markdown_table(["transformation", "decode"] + [f"k<={k}" for k in KS] + ["median d", "max d"], rows),
            "",
            f"False positives: cross-group pairs within k among {len(items)} hashed files "
            f"(derived + groups_real.json, draft decode; {n_pairs:,} pairs):",
            "",
            markdown_table(
                ["matching"] + [f"k<={k}" for k in (*KS, 12, 14, 16)] + ["closest cross-group pair"], fp_rows
            ),
            "",
            "Real groups (`near_dup/groups_real.json`, draft decode): distance of each member to the group's first.",
            "",
            markdown_table(["group", "member", "distance", "mirror-invariant"], real_rows),
        ]
    )


def speed_body(datas: list[bytes], repeats: int, agreement: dict[int, dict[str, float]]) -> str:
    ips = speed(datas, repeats)
    names = list(ips)
    base, bound, ours = ips[names[0]], ips[names[1]], ips[names[2]]
    bound32 = ips[names[4]]
    rows = []
    for name in names:
        ref = bound32 if "32" in name and name.startswith("(c')") else bound
        frac = f"{ips[name] / ref:.0%}" if name.startswith("(c") else ""
        rows.append([name, f"{ips[name]:.0f}", f"{ips[name] / base:.2f}x", frac])
    agree_rows = [
        [
            f"draft('L', ({s}, {s}))",
            f"{a['identical_jpeg']:.1%}",
            f"{a['mean_jpeg']:.2f}",
            a["max_jpeg"],
            f"{a['identical_all']:.1%}",
        ]
        for s, a in agreement.items()
    ]
    a0 = next(iter(agreement.values()))
    mean_kb = sum(len(d) for d in datas) / len(datas) / 1e3
    return "\n".join(
        [
            "### pHash speed (`python -m bench.bench_phash`)",
            "",
            f"{len(datas):,} JPEG decodes (real JPEGs, mean {mean_kb:.0f} KB, repeated), bytes in memory, "
            f"one process, best of {repeats}. Goals: (c) >= 3x (a) and >= 85% of (b).",
            "",
            markdown_table(["variant", "images/s", "vs (a)", "of draft bound"], rows),
            "",
            f"Draft hash vs full-decode imagehash value ({a0['n_jpeg']} JPEGs among {a0['n_all']} "
            "decodable images of coco_mini, tuxpaint_stamps, near_dup; non-JPEGs are never drafted):",
            "",
            markdown_table(["draft", "JPEGs identical", "mean bits", "max bits", "all identical"], agree_rows),
            "",
            f"Machine: {machine()}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~200 decodes, 1 round")
    parser.add_argument("--n", type=int, default=None, help="decodes per variant (overrides --quick)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--data", type=Path, default=None, help="shared data dir (default ../shared/data)")
    parser.add_argument("--no-readme", action="store_true", help="print the tables, leave README alone")
    args = parser.parse_args(argv)
    # imagehash (and our convert("L")) trigger it on Tux Paint palette PNGs; it is not news here.
    warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)

    data_dir = args.data or Path(os.environ.get("VLM_SHARED_DATA", REPO.parent / "shared" / "data"))
    n = args.n or (200 if args.quick else 1000)
    repeats = args.repeats or (1 if args.quick else 3)
    jpegs = jpeg_bytes(data_dir)
    datas = list(itertools.islice(itertools.cycle(jpegs), n))
    all_images = image_bytes(data_dir)
    agreement = {s: draft_agreement(all_images, s) for s in (DRAFT_SIZE, 32)}

    speed_md = speed_body(datas, repeats, agreement)
    quality_md = quality_body(data_dir)
    if args.no_readme:
        print(speed_md + "\n\n" + quality_md)
    else:
        write_block("phash", speed_md)
        write_block("phash_quality", quality_md)


if __name__ == "__main__":
    main()
