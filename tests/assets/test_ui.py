"""End to end through the real webserver: `dagster dev` over the demo sample, a partition backfill
launched through GraphQL, and the lineage and backfill pages rendered by headless Chromium.

Screenshots land in test-artifacts/ui/ (gitignored) with the dagster dev log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from assets import demo
from assets.partitions import image_text_drops
from curation import storage
from pipelines.common import manifest_url

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "ui"
DROPS = ["drop-0001-folder", "drop-0002-webdataset", "drop-0003-jsonl"]
BACKFILLED = DROPS[:2]
BACKFILL_ASSETS = ["image_text_samples", "image_phash"]
IMAGE_TEXT_GROUP = {"image_text_samples", "image_phash", "image_neardup_clusters", "caption_quality", "clip_scores",
                    "metaclip_metadata", "metaclip_entry_counts", "metaclip_balanced", "recaptions", "image_text_shards"}
# Generous: other test sessions share the 2 cores.
STARTUP_TIMEOUT_S = 120
BACKFILL_TIMEOUT_S = 200
CHROMIUM_TIMEOUT_S = 90
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars",
                  # Virtual time runs only while the page is idle, so the app's GraphQL fetches finish first.
                  "--virtual-time-budget=15000"]


# ----------------------------------------------------------------------------------------------
# Process-group helpers: dagster dev and Chromium both fork children that must not outlive the test.


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            alive.append(int(entry.name))
    return alive


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return True
        time.sleep(0.5)
    return not _group_alive(pgid)


def _stop_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGINT the whole group (dagster dev shuts its webserver, daemon and code servers down), then SIGKILL."""
    pgid = proc.pid  # start_new_session=True: the leader's pid is the group id
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break  # nothing left in the group
        deadline = time.monotonic() + wait
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if _wait_group_gone(pgid, max(0.0, deadline - time.monotonic())):
            break
    proc.wait(timeout=5)
    assert _wait_group_gone(pgid, 5), f"processes left behind in group {pgid}: {_group_alive(pgid)}"


def _chromium(url: str, args: list[str], profile: Path) -> str:
    """Run headless Chromium on ``url`` in its own process group; return stdout (the DOM for --dump-dom)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium not found: install it with `apt-get install -y chromium` (scripts/install.sh does)"
    proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True, text=True)
    try:
        out, _ = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop_group(proc, grace_s=5)
        raise
    _wait_group_gone(proc.pid, 10)
    assert proc.returncode == 0, f"chromium exited {proc.returncode} on {url}"
    return out


def _assert_not_blank(png: Path, size: tuple[int, int]) -> None:
    assert png.stat().st_size > 20_000, f"{png} is only {png.stat().st_size} bytes"
    with Image.open(png) as im:
        assert im.size == size
        rgb = im.convert("RGB")
        colors = rgb.getcolors(maxcolors=1 << 16)
        # A rendered page has text and borders: many colours, and the background is not everything.
        assert colors is None or len(colors) > 200, f"{png}: only {len(colors)} colours (blank page?)"
        background = max(colors)[0] if colors else 0
        assert background < 0.99 * size[0] * size[1], f"{png}: {background} pixels share one colour"


# ----------------------------------------------------------------------------------------------
# The running webserver


@dataclass
class Dagster:
    url: str
    root: str
    location: str
    repository: str
    log: Path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            out = json.load(resp)
        assert not out.get("errors"), f"GraphQL errors: {out['errors']}"
        return out["data"]

    @property
    def repo_path(self) -> str:
        """How the UI addresses a repository in URLs (the location alone for the default repository)."""
        return self.location if self.repository == "__repository__" else f"{self.repository}@{self.location}"

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


WORKSPACE_QUERY = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename
        ... on RepositoryLocation { name repositories { name } }
        ... on PythonError { message stack } } } }
    ... on PythonError { message } } }
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deb_cache() -> Path:
    """A per-user cache so repeated runs do not download the sample package again."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlm-curate" / "debs"


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dagster]:
    """`dagster dev` on a free loopback port over a temp instance and the demo sample (3 drops registered)."""
    tmp = tmp_path_factory.mktemp("dagster-ui")
    home, root = tmp / "dagster_home", tmp / "data"
    home.mkdir()
    # The project's instance config, with automation off: the automation sensor would otherwise
    # materialize the whole graph (CLIP included) next to the backfill under test.
    config = (REPO / "dagster_home" / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(config + "\nauto_materialize:\n  enabled: false\n  use_sensors: false\n")

    assert demo.prepare(str(root), _deb_cache()) == DROPS
    demo.ensure_models(str(root))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))  # dagster.yaml reads its storage dir from it
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions(image_text_drops.name, DROPS)

    port = _free_port()
    log = tmp / "dagster-dev.log"
    env = {**os.environ, "DAGSTER_HOME": str(home), "VLM_DATA_ROOT": str(root)}
    with log.open("wb") as log_fh:
        # Own session with default signal handling: SIGINT to the group stops webserver, daemon and
        # code servers together (started from a shell with `&` it would ignore SIGINT).
        proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port),
                                 "-w", "workspace.yaml"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True)
    server = Dagster(url=f"http://127.0.0.1:{port}", root=str(root), location="", repository="", log=log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        entry = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"dagster dev exited {proc.returncode}:\n{server.log_tail()}"
            try:
                entries = server.graphql(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                entries = []
            entry = entries[0] if entries else None
            if entry and entry["loadStatus"] == "LOADED":
                break
            time.sleep(1)
        assert entry and entry["loadStatus"] == "LOADED", \
            f"code location not loaded after {STARTUP_TIMEOUT_S}s: {entry}\n{server.log_tail()}"
        loc = entry["locationOrLoadError"]
        assert loc["__typename"] == "RepositoryLocation", f"definitions failed to load: {loc}"
        server.location, server.repository = loc["name"], loc["repositories"][0]["name"]
        yield server
    finally:
        _stop_group(proc)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, ARTIFACTS / "dagster-dev.log")


# ----------------------------------------------------------------------------------------------
# GraphQL


ASSET_NODES_QUERY = """
query($group: AssetGroupSelector) {
  assetNodes(group: $group) { assetKey { path } groupName isPartitioned partitionStats { numPartitions } } }
"""

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) { __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message } } }
"""

BACKFILL_QUERY = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) { __typename
    ... on PartitionBackfill { status numPartitions runs(limit: 20) { id status tags { key value } } error { message } }
    ... on PythonError { message } } }
"""

PARTITIONS_QUERY = """
query($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) { assetKey { path }
    partitionStats { numMaterialized numPartitions numFailed numMaterializing }
    assetPartitionStatuses { __typename ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } } } }
"""

MATERIALIZATIONS_QUERY = """
query($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) { __typename
    ... on Asset { assetMaterializations { partition runId
        metadataEntries { label ... on IntMetadataEntry { intValue } ... on PathMetadataEntry { path } } } } } }
"""


@pytest.fixture(scope="module")
def backfill(dagster_dev: Dagster) -> dict:
    """The backfill of image_text_samples + image_phash over the first two drops, run to completion."""
    params = {"assetSelection": [{"path": [a]} for a in BACKFILL_ASSETS], "partitionNames": BACKFILLED,
              "title": "test_ui backfill"}
    launched = dagster_dev.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    deadline = time.monotonic() + BACKFILL_TIMEOUT_S
    while True:
        state = dagster_dev.graphql(BACKFILL_QUERY, {"id": backfill_id})["partitionBackfillOrError"]
        assert state["__typename"] == "PartitionBackfill", state
        if state["status"] in TERMINAL_BACKFILL:
            break
        assert time.monotonic() < deadline, \
            f"backfill {backfill_id} still {state['status']} after {BACKFILL_TIMEOUT_S}s: {state}\n{dagster_dev.log_tail()}"
        time.sleep(3)
    return {"id": backfill_id, **state}


def test_code_location_serves_image_text_group(dagster_dev: Dagster) -> None:
    assert dagster_dev.location == "assets.definitions"
    assert dagster_dev.graphql("mutation { setNuxSeen }") == {"setNuxSeen": True}
    group = {"groupName": "image_text", "repositoryName": dagster_dev.repository,
             "repositoryLocationName": dagster_dev.location}
    nodes = dagster_dev.graphql(ASSET_NODES_QUERY, {"group": group})["assetNodes"]
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(by_key) == IMAGE_TEXT_GROUP
    assert all(n["groupName"] == "image_text" for n in nodes)
    partitioned = {k for k, n in by_key.items() if n["isPartitioned"]}
    assert partitioned == {"image_text_samples", "image_phash", "caption_quality", "clip_scores", "metaclip_balanced", "recaptions"}
    # The registered dynamic partitions are visible to the webserver.
    assert {by_key[k]["partitionStats"]["numPartitions"] for k in partitioned} == {len(DROPS)}


def test_backfill_materializes_two_drops(dagster_dev: Dagster, backfill: dict) -> None:
    assert backfill["status"] == "COMPLETED_SUCCESS", f"{backfill}\n{dagster_dev.log_tail()}"
    assert backfill["error"] is None
    # One run for both partitions (BackfillPolicy.single_run: one Beam job per asset for the range).
    runs = backfill["runs"]
    assert [r["status"] for r in runs] == ["SUCCESS"]
    tags = {t["key"]: t["value"] for t in runs[0]["tags"]}
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == tuple(BACKFILLED)

    keys = [{"path": [a]} for a in BACKFILL_ASSETS]
    for node in dagster_dev.graphql(PARTITIONS_QUERY, {"keys": keys})["assetNodes"]:
        assert node["partitionStats"] == {"numMaterialized": 2, "numPartitions": 3, "numFailed": 0, "numMaterializing": 0}
        statuses = node["assetPartitionStatuses"]
        assert statuses["__typename"] == "DefaultPartitionStatuses"
        assert sorted(statuses["materializedPartitions"]) == BACKFILLED
        assert statuses["failedPartitions"] == []

    mats = dagster_dev.graphql(MATERIALIZATIONS_QUERY, {"key": {"path": ["image_phash"]}})["assetOrError"]
    assert mats["__typename"] == "Asset"
    by_partition = {m["partition"]: {e["label"]: e.get("intValue", e.get("path")) for e in m["metadataEntries"]}
                    for m in mats["assetMaterializations"]}
    assert sorted(by_partition) == BACKFILLED
    total = 0
    for p in BACKFILLED:
        url = manifest_url(dagster_dev.root, "image_phash", p)
        assert url == f"{dagster_dev.root}/manifests/image_phash/{p}.parquet"
        assert storage.exists(url)
        n = len(storage.read_records(url))
        assert n > 0
        total += n
    for p in BACKFILLED:  # the run's metadata, on each partition it materialized, matches the manifests on disk
        assert by_partition[p]["manifest"] == f"{dagster_dev.root}/manifests/image_phash"
        assert by_partition[p]["records_out"] == total
    # The partition left out of the backfill was not touched.
    assert not storage.exists(manifest_url(dagster_dev.root, "image_text_samples", DROPS[2]))
    assert not storage.exists(manifest_url(dagster_dev.root, "image_phash", DROPS[2]))


def test_lineage_page_renders(dagster_dev: Dagster, backfill: dict, tmp_path: Path) -> None:
    """The image_text group's lineage graph, wide enough that nodes show their partition status (narrower
    windows zoom out to minimal nodes with elided names; the downstream training node widens the graph)."""
    dagster_dev.graphql("mutation { setNuxSeen }")  # the community modal would cover the graph
    url = f"{dagster_dev.url}/locations/{dagster_dev.repo_path}/asset-groups/image_text"
    size = (3200, 1000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / "image_text_lineage.png"
    png.unlink(missing_ok=True)
    _chromium(url, [f"--window-size={size[0]},{size[1]}", f"--screenshot={png}"], tmp_path / "profile")
    _assert_not_blank(png, size)

    dom = _chromium(url, [f"--window-size={size[0]},{size[1]}", "--dump-dom"], tmp_path / "profile")
    for name in IMAGE_TEXT_GROUP | {"benchmark_fingerprints"}:
        assert name in dom, f"{name} not rendered on {url}"
    assert "Join the Dagster community" not in dom
    # The two backfilled assets show 2 of 3 partitions filled; the per-drop assets downstream none.
    assert dom.count("66% filled") == 2
    assert dom.count("0% filled") == 4  # caption_quality, clip_scores, metaclip_balanced, recaptions


def test_backfill_page_renders(dagster_dev: Dagster, backfill: dict, tmp_path: Path) -> None:
    url = f"{dagster_dev.url}/runs/b/{backfill['id']}"
    size = (1600, 1000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / "backfill.png"
    png.unlink(missing_ok=True)
    _chromium(url, [f"--window-size={size[0]},{size[1]}", f"--screenshot={png}"], tmp_path / "profile")
    _assert_not_blank(png, size)
    dom = _chromium(url, [f"--window-size={size[0]},{size[1]}", "--dump-dom"], tmp_path / "profile")
    for text in [*BACKFILL_ASSETS, *BACKFILLED, "Succeeded"]:
        assert text in dom, f"{text!r} not rendered on {url}"
