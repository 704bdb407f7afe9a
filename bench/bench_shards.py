"""Shard writing throughput: our writer against a raw tarfile baseline and webdataset.ShardWriter.

    python -m bench.bench_shards            # ~1 GB of samples
    python -m bench.bench_shards --quick    # ~300 MB

Samples look like image-text pairs: a ~100 KB random-bytes "jpg" (JPEG magic bytes, incompressible
body), a caption "txt" and a metadata "json"; 1,000 samples per shard. Every writer gets the same
prebuilt samples and writes to the same disk (a temporary folder next to the repo, not /dev/shm):

(a) raw tarfile: ``tarfile.open(path, "w")`` + ``addfile`` per member, one tar per 1,000 samples;
(b) curation.shards.write_shards: tar + parquet + stats json + index.json, sha256 of every tar;
(c) webdataset.ShardWriter (encoder off, fixed mtime), for reference.

MB/s counts sample payload bytes; each variant runs ``--repeats`` times interleaved and the best run
is reported with its CPU time (dirty pages are synced, untimed, between runs). The goal is (b) >= 90%
of (a). (b) also computes the sha256 of every tar on a helper thread: with a free second core it
overlaps the disk writes; on a loaded machine it adds its CPU time instead.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import webdataset as wds

from bench.report import machine, markdown_table, write_block
from curation.shards import Sample, verify_index, write_shards

REPO = Path(__file__).resolve().parents[1]
_JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
_WORDS = "a the dog cat man woman red blue on with in of street table plate sitting standing next to".split()


def make_samples(total_bytes: int, seed: int = 0, pool_size: int = 256) -> list[Sample]:
    """Prebuilt samples totalling ~total_bytes of payload; jpg bodies come from a pool of random blobs."""
    rng = random.Random(seed)
    pool = [_JPEG_HEAD + rng.randbytes(rng.randint(80_000, 120_000)) for _ in range(pool_size)]
    samples: list[Sample] = []
    size = 0
    i = 0
    while size < total_bytes:
        jpg = pool[i % pool_size]
        caption = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "."
        meta = {"url": f"https://example.org/img/{i:08d}.jpg", "width": 640, "height": 480, "caption": caption}
        fields = {"jpg": jpg, "txt": caption.encode(), "json": json.dumps(meta).encode()}
        samples.append(Sample(f"{i:09d}", fields, {"url": meta["url"], "width": 640, "height": 480}))
        size += sum(len(v) for v in fields.values())
        i += 1
    return samples


def run_raw_tarfile(samples: list[Sample], out: Path, per_shard: int) -> None:
    for start in range(0, len(samples), per_shard):
        with tarfile.open(out / f"{start // per_shard:05d}.tar", "w") as tf:
            for s in samples[start : start + per_shard]:
                for ext in sorted(s.fields):
                    data = s.fields[ext]
                    ti = tarfile.TarInfo(f"{s.key}.{ext}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))


def run_ours(samples: list[Sample], out: Path, per_shard: int) -> None:
    write_shards(samples, str(out / "v1"), dataset_name="bench", samples_per_shard=per_shard, lineage={"bench": 1})


def run_wds(samples: list[Sample], out: Path, per_shard: int) -> None:
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, encoder=False, verbose=0, mtime=0) as sink:
        for s in samples:
            sink.write({"__key__": s.key, **s.fields})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~300 MB instead of ~1 GB")
    parser.add_argument("--total-mb", type=float, default=None, help="payload size in MB (overrides --quick)")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmp-dir", default=str(REPO.parent), help="folder on disk for the outputs")
    parser.add_argument("--no-readme", action="store_true", help="print the table, leave README alone")
    args = parser.parse_args(argv)

    total_mb = args.total_mb or (300.0 if args.quick else 1000.0)
    samples = make_samples(int(total_mb * 1e6))
    payload = sum(len(v) for s in samples for v in s.fields.values())
    variants: list[tuple[str, Callable[[list[Sample], Path, int], None]]] = [
        ("(a) raw tarfile", run_raw_tarfile),
        ("(b) curation.shards.write_shards", run_ours),
        ("(c) webdataset.ShardWriter", run_wds),
    ]
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="bench_shards-", dir=args.tmp_dir))
    try:
        for r in range(args.repeats):
            for name, fn in variants:
                out = work / f"{r}-{name[1]}"
                out.mkdir()
                os.sync()
                c0, t0 = time.process_time(), time.perf_counter()
                fn(samples, out, args.samples_per_shard)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if dt < best.get(name, float("inf")):
                    best[name], cpu[name] = dt, dc
                if fn is run_ours and r == 0:
                    problems = verify_index(str(out / "v1"))
                    if problems:
                        raise SystemExit(f"verify_index found problems: {problems[:5]}")
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    raw = best[variants[0][0]]
    rows = [
        [name, f"{best[name]:.2f}", f"{cpu[name]:.2f}", f"{payload / 1e6 / best[name]:.0f}", f"{raw / best[name]:.0%}"]
        for name, _ in variants
    ]
    n_shards = -(-len(samples) // args.samples_per_shard)
    body = "\n".join(
        [
            "### Shard writing (`python -m bench.bench_shards`)",
            "",
            f"{len(samples):,} samples (~100 KB random jpg + txt + json), {payload / 1e6:,.0f} MB payload, "
            f"{n_shards} shards of {args.samples_per_shard:,}; best of {args.repeats}, local disk. "
            "Ratio = raw tarfile time / variant time (goal for ours: >= 90%). Ours also hashes every tar "
            "(sha256, on a second thread), so it needs a second free core to keep up.",
            "",
            markdown_table(["writer", "seconds", "CPU s (all threads)", "MB/s", "vs raw tarfile"], rows),
            "",
            f"Machine: {machine()}",
        ]
    )
    if args.no_readme:
        print(body)
    else:
        write_block("shards", body)


if __name__ == "__main__":
    main()
