"""Ingest: every input layout, byte ranges into tars, URL fetching limits on a loopback server."""

from __future__ import annotations

import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from curation import ingest


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tar_references_point_at_the_exact_bytes(tmp_path: Path, shared_data: Path) -> None:
    jpg = (shared_data / "image_caption/coco_mini/images/val2017/000000000139.jpg").read_bytes()
    _tar(tmp_path / "00000.tar", {"a.jpg": jpg, "a.txt": b"A living room.", "a.json": b'{"k": 1}',
                                   "b.txt": b"caption without image", "c.png": b"\x89PNG..."})
    refs = list(ingest.iter_tar(str(tmp_path / "00000.tar")))
    assert [(r["source_key"].split("#")[1], r["reason"]) for r in refs] == [
        ("a.jpg", None), ("b", "missing_image"), ("c.png", "missing_caption")]
    assert refs[0]["caption"] == "A living room." and json.loads(refs[0]["extra"]) == {"k": 1}
    assert ingest.load_bytes(refs[0]) == jpg


def test_table_and_folder_layouts(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(b"x")
    (tmp_path / "t.jsonl").write_text('{"path": "imgs/x.png", "caption": "An x."}\n{"caption": "no image"}\nnot json\n')
    refs = list(ingest.iter_table(str(tmp_path / "t.jsonl")))
    assert [r["reason"] for r in refs] == ["bad_row", None, "missing_image"]
    assert refs[1]["uri"] == str(tmp_path / "imgs" / "x.png")
    folder = tmp_path / "f"
    folder.mkdir()
    for name, data in {"a.jpg": b"1", "a.txt": "A cat.\nsecond line", "b.png": b"2", "b.json": '{"caption": "A dog."}',
                       "c.webp": b"3"}.items():
        (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    refs = list(ingest.iter_source("folder", str(folder)))
    assert [(Path(r["uri"]).name, r["caption"], r["reason"]) for r in refs] == [
        ("a.jpg", "A cat.", None), ("b.png", "A dog.", None), ("c.webp", None, "missing_caption")]


def test_discover_reads_images_of_a_table_drop_through_the_table(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(b"x")
    (tmp_path / "samples.jsonl").write_text('{"path": "images/x.png", "caption": "An x."}\n')
    _tar(tmp_path / "00000.tar", {"k.txt": b"t"})
    assert [k for k, _ in ingest.discover(str(tmp_path))] == ["table", "tar"]
    with pytest.raises(FileNotFoundError, match="drop not found"):
        ingest.discover(str(tmp_path / "missing"))


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/ok.jpg":
            body = b"\xff\xd8" + b"0" * 1000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/big.jpg":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the cap must hold while streaming
            self.wfile.write(b"0" * 50_000)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture()
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_url_limits(http_server: str) -> None:
    limits = ingest.FetchLimits(max_bytes=10_000, timeout_s=5, retries=0)
    assert len(ingest.fetch_url(f"{http_server}/ok.jpg", limits)) == 1002
    with pytest.raises(ingest.FetchError) as e:
        ingest.fetch_url(f"{http_server}/big.jpg", limits)
    assert e.value.reason == "too_many_bytes"
    with pytest.raises(ingest.FetchError) as e:
        ingest.fetch_url(f"{http_server}/missing.jpg", limits)
    assert e.value.reason == "http_error"
    with pytest.raises(ingest.FetchError) as e:
        ingest.fetch_url("http://127.0.0.1:9/closed.jpg", limits)  # port 9: nothing listens
    assert e.value.reason == "fetch_error"
