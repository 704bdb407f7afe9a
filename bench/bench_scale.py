"""Corpus-wide image-text stages at scale: wall time, records/s and peak RSS per process, on the
in-process FnApiRunner and on Beam's portable runner with external SDK workers.

    python -m bench.bench_scale                  # 10^5 and 10^6 records; writes README (~1 h, idle 2 cores)
    python -m bench.bench_scale --quick          # 10^4 and 10^5 records; prints only (~10 min)
    python -m bench.bench_scale --sizes 100000,1000000,10000000 --stages neardup,metaclip
    python -m bench.bench_scale --quick --write  # quick figures into README anyway

Data (generated here, under a temporary folder that is removed at the end; ``--tmp-dir`` picks
its parent, default the system temp dir): N records spread over ``--drops`` drops, each with a
32-hex id, sha256, a 64-bit pHash, a caption of 5-20 Zipf-drawn English words (wordfreq's top
5,000, all of them MetaCLIP entries), a CLIP score and a tiny payload (48-96 random bytes after a
JPEG header) referenced by byte range into one blob file per drop. Planted in the hashes: 1% exact
duplicates (same sha256 and pHash), 2% near-duplicates of a random earlier record at Hamming
distance 1..k (so clusters span drops), 0.5% identical pHash with different bytes, and one hot
key of ``--hot`` records sharing one hash (a blank-image cluster).

Stages, each through the public runner of pipelines.image_text with default settings:
  neardup   ``run_neardup`` over the ``image_phash`` manifests of every drop (no benchmark set);
  clip      ``run_clip`` per drop over pre-scored records: the scoring DoFn (``ClipScoreBatch``) is
            replaced by ``PrescoredClip``, which passes records through with the score they carry,
            so what is timed is the stage's threshold (top 90% per drop) and filter, no model;
  metaclip  ``run_metaclip_counts`` over ``clip_scores`` manifests with the default metadata
            (``ensure_defaults``: WordNet + wordfreq, built once per size, untimed);
  shards    ``run_shards`` from ``recaptions`` manifests whose records reference the tiny payloads.

Runners (``--runners``): ``inproc`` is the FnApiRunner inside the driver (engine, its shuffle
buffers and the one SDK worker all in one process); ``portable-W`` is
``--runner=PortableRunner --environment_type=EXTERNAL`` against a fresh local job service
(``local_job_service_main``: the engine and its shuffle buffers) and a fresh EXTERNAL worker pool
(``worker_pool_main``) that starts W SDK worker processes (``--direct_num_workers=W
--sdk_worker_parallelism=W``), both started per measurement and stopped by process group. Beam's
job service drives one SDK worker whatever the flags say (see ``pipelines.local_job_service``): it is started
through that entry point that passes ``--direct_num_workers`` on, so W workers really share each stage.

Each measurement runs in a fresh driver process. Wall time is the run_* call alone (imports and
data generation excluded), records/s = N / wall. Peak RSS is each process's VmHWM
(/proc/PID/status), polled every 0.1 s over the driver's, the job service's and the pool's process
trees (SDK workers are children of the pool); a worker's last 0.1 s before it exits may be missed.
The run is killed (and reported) if the RSS of all of them together passes ``--max-rss-gb``.

Goals reported, not asserted (issue 14): the peak RSS of every SDK worker at the larger size is at
most 2x its value at the smaller; wall time grows no faster than N log N; 2 workers are at least
1.6x faster than 1 on the per-record stages (clip, metaclip).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import apache_beam as beam

from bench.report import machine, markdown_table, write_block

REPO = Path(__file__).resolve().parents[1]
STAGES = ("neardup", "metaclip", "clip", "shards")  # run order (clip rewrites clip_scores: inputs are re-linked)
PER_RECORD = ("clip", "metaclip")  # stages whose work is per record (the 2-vs-1 worker goal)
INPUTS = {  # stage -> the upstream asset(s) it reads
    "neardup": ("image_phash",),
    "metaclip": ("clip_scores",),
    "clip": ("caption_quality",),
    "shards": ("recaptions",),
}
_JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


# ----------------------------------------------------------------------------------------------
# Synthetic corpus (runs in its own process: the parent stays small while the drivers run)


def drop_names(drops: int) -> list[str]:
    return [f"drop-{i + 1:04d}" for i in range(drops)]


def generate(root: Path, n: int, drops: int, hot: int, seed: int = 0) -> dict:
    """Write the synthetic manifests of every input asset under root/_inputs, the payload blobs under
    root/_blobs and the default MetaCLIP metadata under root/models. Returns what was planted."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation import metaclip
    from pipelines import image_text as it

    rng = np.random.default_rng(seed)
    settings = it.ImageTextSettings()
    k = settings.hamming_k
    parts = drop_names(drops)
    part_of = np.sort(rng.integers(0, drops, size=n))  # drop index per record (records in drop order)

    ids = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
    id_strs = [f"{a:016x}{b:016x}" for a, b in ids.tolist()]
    sha = rng.integers(0, 2**63, size=(n, 4), dtype=np.int64)
    sha_strs = [f"{a:016x}{b:016x}{c:016x}{d:016x}" for a, b, c, d in sha.tolist()]
    phash = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)

    # Planted duplicates: each picks a random earlier record as its source.
    order = rng.permutation(np.arange(1, n))
    n_exact, n_near, n_same = n // 100, n // 50, n // 200
    n_hot = min(hot, max(n // 10, 2))
    exact = order[:n_exact]
    near = order[n_exact : n_exact + n_near]
    same = order[n_exact + n_near : n_exact + n_near + n_same]
    hot_idx = order[n_exact + n_near + n_same : n_exact + n_near + n_same + n_hot]
    for idx in (exact, same):
        src = (rng.random(idx.size) * idx).astype(np.int64)
        phash[idx] = phash[src]
        if idx is exact:
            for i, s in zip(idx.tolist(), src.tolist()):
                sha_strs[i] = sha_strs[s]
    src = (rng.random(near.size) * near).astype(np.int64)
    flips = np.zeros(near.size, dtype=np.uint64)
    dists = rng.integers(1, k + 1, size=near.size)
    for j, d in enumerate(dists.tolist()):
        for b in rng.choice(64, size=d, replace=False).tolist():
            flips[j] |= np.uint64(1) << np.uint64(b)
    phash[near] = phash[src] ^ flips
    phash[hot_idx] = phash[hot_idx[0]] if hot_idx.size else 0

    vocab = metaclip.wordfreq_top("en", 5000)
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    lens = rng.integers(5, 21, size=n)
    words = rng.choice(len(vocab), size=int(lens.sum()), p=weights / weights.sum())
    captions, pos = [], 0
    for ln in lens.tolist():
        captions.append(" ".join(vocab[w] for w in words[pos : pos + ln].tolist()).capitalize() + ".")
        pos += ln
    width = rng.integers(200, 2000, size=n).astype(np.int32)
    height = rng.integers(200, 2000, size=n).astype(np.int32)
    clip = np.clip(rng.normal(0.25, 0.05, size=n), -1, 1).astype(np.float32)
    entries_of = [[vocab[w]] if w % 3 else [] for w in rng.integers(0, 300, size=n).tolist()]

    blobs = root / "_blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    sizes = rng.integers(48, 97, size=n) + len(_JPEG_HEAD)
    for d, part in enumerate(parts):
        sel = np.nonzero(part_of == d)[0]
        lo, hi = (int(sel[0]), int(sel[-1]) + 1) if sel.size else (0, 0)
        sz = sizes[lo:hi]
        offsets = np.concatenate([[0], np.cumsum(sz)[:-1]]).astype(np.int64)
        blob = blobs / f"{part}.bin"
        with open(blob, "wb") as f:
            for s in sz.tolist():
                f.write(_JPEG_HEAD + rng.bytes(s - len(_JPEG_HEAD)))
        m = hi - lo
        sample_cols = {
            "id": id_strs[lo:hi],
            "partition": [part] * m,
            "source_key": [f"{part}/img/{i:09d}.jpg" for i in range(lo, hi)],
            "uri": [str(blob)] * m,
            "byte_offset": offsets,
            "byte_size": sz.astype(np.int64),
            "caption": captions[lo:hi],
            "extra": [None] * m,
            "sha256": sha_strs[lo:hi],
            "n_bytes": sz.astype(np.int64),
            "format": ["jpeg"] * m,
            "width": width[lo:hi],
            "height": height[lo:hi],
        }
        base = pa.table(sample_cols, schema=it.SAMPLE_SCHEMA)
        tables = {"image_phash": base.append_column(pa.field("phash", pa.uint64()), pa.array(phash[lo:hi]))}
        tables["caption_quality"] = (
            tables["image_phash"]
            .append_column("cluster_id", pa.array(id_strs[lo:hi], pa.string()))
            .append_column("cluster_size", pa.array(np.ones(m, np.int32)))
            .append_column("caption_stats", pa.array(['{"n_words": 12}'] * m, pa.string()))
            .append_column("caption_lang", pa.array(["en"] * m, pa.string()))
            .append_column("clip_score", pa.array(clip[lo:hi]))
        )
        tables["clip_scores"] = tables["caption_quality"]
        tables["recaptions"] = (
            tables["clip_scores"]
            .append_column("metaclip_entries", pa.array(entries_of[lo:hi], pa.list_(pa.string())))
            .append_column("recaption", pa.array([None] * m, pa.string()))
            .append_column("recaption_status", pa.array(["skipped"] * m, pa.string()))
            .append_column("recaption_model", pa.array([None] * m, pa.string()))
            .append_column("recaption_consistency", pa.array([None] * m, pa.float32()))
        )
        for asset, table in tables.items():
            out = root / "_inputs" / asset / f"{part}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out, row_group_size=16_384)  # row groups let readers split a drop
    it.ensure_defaults(str(root), settings, ["metaclip_counts"])
    return {"n": n, "drops": drops, "exact": int(n_exact), "near": int(n_near), "same_hash": int(n_same), "hot": int(n_hot)}


# ----------------------------------------------------------------------------------------------
# One measurement (runs in a fresh driver process)

class PrescoredClip(beam.DoFn):
    """Stands in for ``ClipScoreBatch`` (same constructor): records arrive with their clip_score, so
    no model is loaded and no image decoded; batches pass through unchanged."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__()

    def process(self, batch: list[dict]):
        yield from batch


def _rows(url: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(url).metadata.num_rows if os.path.exists(url) else 0


def run_one(stage: str, root: str, drops: int, argv: list[str]) -> dict:
    """Run one stage over the corpus under root; wall time and what it produced."""
    import resource

    from bench import bench_scale as mod  # the importable copy (this may run as __main__)
    from pipelines import image_text as it

    settings = it.ImageTextSettings()
    parts = drop_names(drops)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if stage == "neardup":
        it.run_neardup(root, parts, settings, argv)
        kept = sum(_rows(f"{root}/manifests/{it.ASSET['neardup']}/{p}.parquet") for p in parts)
        dropped = sum(_rows(f"{root}/quarantine/{it.ASSET['neardup']}/{p}.parquet") for p in parts)
        out = f"{kept:,} kept, {dropped:,} dup"
    elif stage == "clip":
        if not hasattr(it, "ClipScoreBatch"):
            raise SystemExit("bench_scale: pipelines.image_text.ClipScoreBatch is gone; point PrescoredClip at the new scorer")
        it.ClipScoreBatch = mod.PrescoredClip
        it.run_clip(root, parts, settings, argv)  # every drop in one job; a threshold per drop
        kept = sum(_rows(f"{root}/manifests/{it.ASSET['clip']}/{p}.parquet") for p in parts)
        dropped = sum(_rows(f"{root}/quarantine/{it.ASSET['clip']}/{p}.parquet") for p in parts)
        out = f"{kept:,} kept, {dropped:,} below"
    elif stage == "metaclip":
        it.run_metaclip_counts(root, parts, settings, argv)
        summary = json.loads(Path(root, "manifests", it.ASSET["metaclip_counts"], "summary.json").read_text())
        out = f"{summary['n_texts']:,} texts, {summary['n_entries_matched']:,} entries"
    elif stage == "shards":
        index = it.run_shards(root, parts, settings, upstream="recaptions", argv=argv)
        out = f"{index.num_samples:,} samples, {len(index.shards)} shards"
    else:
        raise ValueError(stage)
    wall = time.perf_counter() - t0
    return {"wall": wall, "out": out, "driver_rss0_kb": rss0,
            "driver_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


# ----------------------------------------------------------------------------------------------
# Orchestration: servers, RSS polling, the tables


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # workers run `python -c`
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
    env.setdefault("PYTHONHASHSEED", "0")
    env.setdefault("DAGSTER_HOME", str(REPO / "dagster_home"))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("localhost", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port} after {timeout:.0f} s")


def _stop(proc: subprocess.Popen | None) -> None:
    """Stop a server we started (its own session) by its process group."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _hwm_kb(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process in KiB; (0, 0) once it is gone."""
    hwm = rss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return hwm, rss


class Poller(threading.Thread):
    """Peak RSS per process of some process trees: groups 'driver', 'job', and 'workers' (the pool's
    descendants, not the pool itself); kills the driver if their total RSS passes a limit."""

    def __init__(self, driver: subprocess.Popen, job: subprocess.Popen | None, pool: subprocess.Popen | None,
                 limit_kb: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.driver, self.job, self.pool, self.limit_kb, self.interval = driver, job, pool, limit_kb, interval
        self.peak: dict[str, dict[int, int]] = {"driver": {}, "job": {}, "workers": {}}
        self.over = False
        self._halt = threading.Event()

    def _tree(self, proc: subprocess.Popen | None, include_self: bool) -> list[int]:
        import psutil

        if proc is None:
            return []
        try:
            p = psutil.Process(proc.pid)
            return ([p.pid] if include_self else []) + [c.pid for c in p.children(recursive=True)]
        except psutil.Error:
            return []

    def run(self) -> None:
        while not self._halt.is_set():
            total = 0
            for group, proc, me in (("driver", self.driver, True), ("job", self.job, True), ("workers", self.pool, False)):
                for pid in self._tree(proc, me):
                    hwm, rss = _hwm_kb(pid)
                    total += rss
                    if hwm:
                        self.peak[group][pid] = max(self.peak[group].get(pid, 0), hwm)
            if total > self.limit_kb and not self.over:
                self.over = True
                try:
                    os.killpg(self.driver.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(stage: str, n: int, runner: str, root: Path, drops: int, work: Path, limit_kb: int, timeout: float) -> dict:
    env = _env()
    job = pool = driver = poller = None
    argv: list[str] = []
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    tag = f"{stage}-{n}-{runner}"
    try:
        if runner.startswith("portable-"):
            w = int(runner.split("-", 1)[1])
            jp, wp = _free_port(), _free_port()
            staging = work / "staging"
            staging.mkdir(exist_ok=True)
            job = subprocess.Popen(
                [sys.executable, "-m", "pipelines.local_job_service", "--port", str(jp), "--staging_dir", str(staging)],
                cwd=REPO, env=env, stdout=open(logs / f"{tag}.job.log", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True)
            pool = subprocess.Popen(
                [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={wp}"],
                cwd=REPO, env=env, stdout=open(logs / f"{tag}.pool.log", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True)
            _wait_port(jp, job)
            _wait_port(wp, pool)
            argv = ["--runner=PortableRunner", f"--job_endpoint=localhost:{jp}", "--environment_type=EXTERNAL",
                    f"--environment_config=localhost:{wp}", f"--sdk_worker_parallelism={w}", f"--direct_num_workers={w}"]
        elif runner != "inproc":
            raise ValueError(f"unknown runner {runner!r} (inproc or portable-W)")
        result_file = work / f"{tag}.json"
        cmd = [sys.executable, "-m", "bench.bench_scale", "--_run", stage, "--_root", str(root), "--drops", str(drops),
               "--_result", str(result_file), "--_argv", json.dumps(argv)]
        driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(logs / f"{tag}.driver.log", "wb"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        poller = Poller(driver, job, pool, limit_kb)
        poller.start()
        try:
            rc = driver.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop(driver)
            rc = "timeout"
    finally:
        if poller is not None:
            poller.stop()
        _stop(driver)
        _stop(pool)
        _stop(job)
    res: dict = {"stage": stage, "n": n, "runner": runner}
    peak = {g: max(v.values(), default=0) for g, v in poller.peak.items()}
    res.update(driver_kb=peak["driver"], job_kb=peak["job"], worker_kb=peak["workers"],
               n_workers=len(poller.peak["workers"]))
    if rc == 0 and result_file.exists():
        res.update(json.loads(result_file.read_text()))
        res["driver_kb"] = max(res["driver_kb"], res["driver_maxrss_kb"])
    else:
        tail = (logs / f"{tag}.driver.log").read_text(errors="replace")[-1500:]
        res["error"] = "over --max-rss-gb" if poller.over else ("timeout" if rc == "timeout" else f"rc {rc}")
        print(f"[bench_scale] {tag} failed ({res['error']}):\n{tail}", file=sys.stderr, flush=True)
    return res


def _link_inputs(root: Path, stage: str) -> None:
    """Fresh outputs, pristine inputs: remove what earlier runs wrote, hard-link this stage's inputs."""
    for d in ("manifests", "quarantine", "shards"):
        shutil.rmtree(root / d, ignore_errors=True)
    for asset in INPUTS[stage]:
        (root / "manifests" / asset).mkdir(parents=True, exist_ok=True)
        for f in sorted((root / "_inputs" / asset).iterdir()):
            os.link(f, root / "manifests" / asset / f.name)


def _mb(kb: int) -> str:
    return f"{kb / 1024:,.0f}" if kb else "-"


def _n(n: int) -> str:
    e = round(math.log10(n)) if n > 0 else 0
    return f"10^{e}" if 10**e == n else f"{n:,}"


def tables(results: list[dict], sizes: list[int], stages: list[str], runners: list[str]) -> tuple[str, str]:
    by = {(r["stage"], r["n"], r["runner"]): r for r in results}
    rows = []
    for stage in stages:
        for n in sizes:
            for runner in runners:
                r = by.get((stage, n, runner))
                if r is None:
                    continue
                if "error" in r:
                    rows.append([stage, _n(n), runner, r["error"], "", "", "", "", "", ""])
                    continue
                procs = {"driver": r["driver_kb"], "job service": r["job_kb"], "SDK worker": r["worker_kb"]}
                big = max(procs, key=procs.get)
                rows.append([
                    stage, _n(n), runner, f"{r['wall']:.1f}", f"{n / r['wall']:,.0f}",
                    f"{_mb(procs[big])} ({big if runner != 'inproc' else 'in-process'})",
                    _mb(r["driver_kb"]), _mb(r["job_kb"]),
                    f"{_mb(r['worker_kb'])} (x{r['n_workers']})" if r["n_workers"] else "in driver",
                    r["out"],
                ])
    header = ["stage", "N", "runner", "wall s", "records/s", "peak RSS MB, largest process", "driver MB",
              "job service MB (runner buffers)", "largest SDK worker MB", "output"]
    main = markdown_table(header, rows)

    goals = []
    small, large = (sizes[0], sizes[-1]) if len(sizes) > 1 else (None, None)
    bound = (large * math.log(large)) / (small * math.log(small)) if small else None
    for stage in stages:
        row = [stage]
        for runner in [r for r in runners if r.startswith("portable-")][-1:] or ["-"]:
            a, b = by.get((stage, small, runner)), by.get((stage, large, runner))
            ok = a and b and "error" not in a and "error" not in b and a["worker_kb"] and b["worker_kb"]
            row.append(f"{b['worker_kb'] / a['worker_kb']:.2f} ({runner})" if ok else "-")
        for runner in ("inproc", [r for r in runners if r.startswith("portable-")][-1] if any(
                r.startswith("portable-") for r in runners) else None):
            a, b = by.get((stage, small, runner)), by.get((stage, large, runner))
            ok = a and b and "error" not in a and "error" not in b
            row.append(f"{b['wall'] / a['wall']:.1f}x ({runner})" if ok else "-")
        one, two = by.get((stage, large, "portable-1")), by.get((stage, large, "portable-2"))
        ok = one and two and "error" not in one and "error" not in two
        sp = f"{one['wall'] / two['wall']:.2f}x" if ok else "-"
        row.append(sp if stage in PER_RECORD else f"({sp}, corpus stage)")
        goals.append(row)
    gh = ["stage", f"worker RSS {_n(large or 0)} / {_n(small or 0)} (goal <= 2)",
          f"wall {_n(large or 0)} / {_n(small or 0)}, in-process (N log N: {bound or 0:.1f}x)",
          f"wall, portable (N log N: {bound or 0:.1f}x)", f"2 vs 1 worker at {_n(large or 0)} (goal >= 1.6x)"]
    return main, markdown_table(gh, goals)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10^4 and 10^5 records; prints only (unless --write)")
    ap.add_argument("--sizes", default=None, help="comma-separated record counts (default 100000,1000000)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {','.join(STAGES)}")
    ap.add_argument("--runners", default="inproc,portable-1,portable-2", help="inproc and/or portable-W")
    ap.add_argument("--drops", type=int, default=4)
    ap.add_argument("--hot", type=int, default=200, help="records sharing one pHash, a hot key (today m(m-1)/2 edges; 10000 to stress it)")
    ap.add_argument("--tmp-dir", default=None, help="parent folder of the generated data (default: system temp)")
    ap.add_argument("--max-rss-gb", type=float, default=None, help="kill a run whose processes pass this (default 85%% of RAM)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    ap.add_argument("--write", action="store_true", help="write the README block even with --quick")
    ap.add_argument("--no-readme", action="store_true", help="print the tables, leave README alone")
    ap.add_argument("--_run", help=argparse.SUPPRESS)
    ap.add_argument("--_root", help=argparse.SUPPRESS)
    ap.add_argument("--_result", help=argparse.SUPPRESS)
    ap.add_argument("--_argv", default="[]", help=argparse.SUPPRESS)
    ap.add_argument("--_generate", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._run:  # a driver process
        res = run_one(args._run, args._root, args.drops, json.loads(args._argv))
        Path(args._result).write_text(json.dumps(res))
        return
    if args._generate:
        print(json.dumps(generate(Path(args._root), args._generate, args.drops, args.hot)))
        return

    import psutil

    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else ([10_000, 100_000] if args.quick else [100_000, 1_000_000])
    stages = [s for s in STAGES if s in args.stages.split(",")]
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)}")
    runners = [r for r in args.runners.split(",") if r]
    limit_kb = int((args.max_rss_gb * 2**20) if args.max_rss_gb else psutil.virtual_memory().total * 0.85 / 1024)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally below cleans up
    work = Path(tempfile.mkdtemp(prefix="bench_scale-", dir=args.tmp_dir))
    results: list[dict] = []
    planted: dict[int, dict] = {}
    t_all = time.perf_counter()
    try:
        for n in sizes:
            root = work / f"n{n}"
            t0 = time.perf_counter()
            gen = subprocess.run(
                [sys.executable, "-m", "bench.bench_scale", "--_generate", str(n), "--_root", str(root),
                 "--drops", str(args.drops), "--hot", str(args.hot)],
                cwd=REPO, env=_env(), check=True, capture_output=True, text=True)
            planted[n] = json.loads(gen.stdout.strip().splitlines()[-1])
            print(f"[bench_scale] generated {n:,} records in {time.perf_counter() - t0:.0f} s: {planted[n]}", flush=True)
            for stage in stages:
                for runner in runners:
                    _link_inputs(root, stage)
                    r = measure(stage, n, runner, root, args.drops, work, limit_kb, args.timeout)
                    results.append(r)
                    print(f"[bench_scale] {json.dumps(r)}", flush=True)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    main_table, goals_table = tables(results, sizes, stages, runners)
    p = planted[sizes[-1]]
    body = "\n".join([
        f"`python -m bench.bench_scale{' --quick' if args.quick else ''}`: synthetic image-text manifests of {' and '.join(_n(n) for n in sizes)} records over {args.drops} drops "
        f"(at {_n(sizes[-1])}: {p['exact']:,} exact duplicates, {p['near']:,} near-duplicates within k, "
        f"{p['same_hash']:,} identical pHashes, a hot key of {p['hot']:,} identical hashes; tiny payloads of "
        "~70 bytes), through `run_neardup`, `run_metaclip_counts`, `run_clip` (threshold and filter on pre-scored "
        "records: the scoring DoFn passes records through) and `run_shards`, default settings. `inproc`: "
        "FnApiRunner in the driver (engine, shuffle buffers and worker are one process). `portable-W`: "
        "PortableRunner against a local job service (the engine: its RSS is the runner's own shuffle buffers) "
        "and an EXTERNAL worker pool with W SDK worker processes. Peak RSS is each process's VmHWM; wall time "
        "is the run_* call (the per-drop clip stage runs all drops in one job, a threshold per drop).",
        "",
        main_table,
        "",
        *(["Goals (issue 14; reported, not asserted):", "", goals_table, ""] if len(sizes) > 1 else []),
        f"Machine: {machine()}; total {time.perf_counter() - t_all:.0f} s. The cores were shared with other work, "
        "so the worker speedup is a lower bound.",
    ])
    if args.no_readme or (args.quick and not args.write):
        print(body)
    else:
        write_block("scale", body, section="Running at scale")


if __name__ == "__main__":
    main()
