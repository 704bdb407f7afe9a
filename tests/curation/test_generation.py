"""curation.generation: in-process vLLM, an OpenAI-compatible vLLM server, retries, and the cache.

One in-process engine (the tiny Qwen2.5-VL: text prompts and image chat) and one real server (the
tiny causal LM) per session; the server starts in the background while the engine loads. Cache
semantics are tested with a deterministic scripted engine, plus one real vLLM round trip.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import requests
from PIL import Image

from curation.generation import (
    CachedEngine,
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    OpenAIEngine,
    ResponseCache,
    SamplingParams,
    VLLMEngine,
    cache_key,
    request_id_of,
    request_seed,
)
from curation.models import build_tiny_causal_lm, build_tiny_qwen2_5_vl

REPO = Path(__file__).resolve().parents[2]
COCO = "image_caption/coco_mini/images/train2017/000000493652.jpg"  # 640 x 399
PROMPTS = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:", "A photo of"]


# ------------------------------------------------------------------------------------------------
# A deterministic scripted engine (test-only) for the cache semantics
# ------------------------------------------------------------------------------------------------


class ScriptedEngine:
    """Answers from a hash of (model, request, params); records every batch it receives."""

    def __init__(self, model_id: str = "scripted", fail_on: str | None = None) -> None:
        self._model_id = model_id
        self.batches: list[list[str]] = []
        self.fail_on = fail_on

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        self.batches.append([request_id_of(r) for r in requests])
        out = []
        for r in requests:
            rid = request_id_of(r)
            if rid == self.fail_on:
                out.append(GenerationResult(rid, [], self.model_id, error="HTTP 503: overloaded"))
                continue
            h = cache_key(self.model_id, r, params)[:8]
            comps = [Completion(f"{h}-{i}", "length", 5, params.max_tokens) for i in range(params.n)]
            out.append(GenerationResult(rid, comps, self.model_id))
        return out


def _requests(n: int = 3) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=f"prompt {i}", request_id=f"r{i}") for i in range(n)]


@pytest.fixture(params=["sqlite", "folder"])
def cache(request, tmp_path) -> ResponseCache:
    if request.param == "sqlite":
        return ResponseCache(str(tmp_path / "cache" / "generation.sqlite"))
    # Any non-local fsspec URL is a folder of JSON files (memory:// is a real in-process filesystem).
    return ResponseCache(f"memory://gen-cache-{tmp_path.name}")


def test_scripted_engine_satisfies_the_protocol():
    assert isinstance(ScriptedEngine(), Engine)
    assert isinstance(OpenAIEngine("http://127.0.0.1:1", "m"), Engine)
    assert isinstance(VLLMEngine("/nonexistent"), Engine)  # lazy: nothing loads until generate


def test_cache_miss_then_hit(cache):
    engine = ScriptedEngine()
    cached = CachedEngine(engine, cache)
    params = SamplingParams(n=2, max_tokens=7)
    first = cached.generate(_requests(), params)
    assert [r.cached for r in first] == [False, False, False]
    assert engine.batches == [["r0", "r1", "r2"]]
    second = cached.generate(_requests(), params)
    assert engine.batches == [["r0", "r1", "r2"]]  # not called again
    assert [r.cached for r in second] == [True, True, True]
    assert [r.completions for r in second] == [r.completions for r in first]
    assert [r.request_id for r in second] == ["r0", "r1", "r2"]
    assert (cached.hits, cached.misses) == (3, 3)
    assert len(cache) == 3


def test_cache_partial_batch_sends_only_misses_once(cache):
    engine = ScriptedEngine()
    cached = CachedEngine(engine, cache)
    params = SamplingParams()
    cached.generate(_requests(2), params)
    reqs = _requests(4) + [GenerationRequest(prompt="prompt 3", request_id="r3")]  # r3 twice
    out = cached.generate(reqs, params)
    assert engine.batches[-1] == ["r2", "r3"]
    assert [r.cached for r in out] == [True, True, False, False, False]
    assert out[3].completions == out[4].completions


@pytest.mark.parametrize(
    "change",
    [
        {"n": 2},
        {"temperature": 0.0},
        {"top_p": 0.9},
        {"max_tokens": 255},
        {"seed": 1},
        {"stop": ("\n",)},
    ],
    ids=lambda c: next(iter(c)),
)
def test_cache_changed_sampling_param_misses(cache, change):
    engine = ScriptedEngine()
    cached = CachedEngine(engine, cache)
    base = SamplingParams()
    cached.generate(_requests(1), base)
    out = cached.generate(_requests(1), SamplingParams(**{**base.to_dict(), "stop": base.stop, **change}))
    assert len(engine.batches) == 2 and out[0].cached is False
    assert cached.generate(_requests(1), base)[0].cached is True  # the original is still there


def test_cache_key_covers_model_prompt_id_and_image_content(tmp_path):
    params = SamplingParams()
    img_a, img_b = b"\x89PNG fake a", b"\x89PNG fake b"
    path_a = tmp_path / "a.png"
    path_a.write_bytes(img_a)
    def msg(image):
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "hi"}]}]

    key = lambda r, model="m": cache_key(model, r, params)  # noqa: E731
    base = GenerationRequest(messages=msg(img_a), request_id="x")
    assert key(base) == key(GenerationRequest(messages=msg(str(path_a)), request_id="x"))  # bytes vs path
    # A placeholder item filled from request.images is the same request.
    filled = GenerationRequest(
        messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        images=[img_a],
        request_id="x",
    )
    assert key(base) == key(filled)
    # Images without placeholders go first in the first user message: the same request again.
    implicit = GenerationRequest(messages=[{"role": "user", "content": "hi"}], images=[img_a], request_id="x")
    assert key(base) == key(implicit)
    assert key(base) != key(GenerationRequest(messages=msg(img_b), request_id="x"))
    assert key(base) != key(base, model="other")
    assert key(base) != key(GenerationRequest(messages=msg(img_a), request_id="y"))
    p = GenerationRequest(prompt="hi", request_id="x")
    assert key(p) != key(GenerationRequest(prompt="hi ", request_id="x"))
    assert key(p) != key(GenerationRequest(prompt="hi", images=[img_a], request_id="x"))
    # Without an id, the id derives from content: equal content, equal key and seed.
    assert request_id_of(GenerationRequest(prompt="hi")) == request_id_of(GenerationRequest(prompt="hi"))
    assert request_id_of(GenerationRequest(prompt="hi")) != request_id_of(GenerationRequest(prompt="ho"))


def test_request_validation():
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest(prompt="a", messages=[{"role": "user", "content": "b"}])
    with pytest.raises(ValueError, match="exactly one"):
        GenerationRequest()
    assert SamplingParams(stop="\n").stop == ("\n",)
    with pytest.raises(ValueError, match="have no image item"):
        req = GenerationRequest(messages=[{"role": "system", "content": "s"}], images=[b"x"])
        cache_key("m", req, SamplingParams())


def test_cache_does_not_store_errors_and_persists(tmp_path):
    url = str(tmp_path / "c.sqlite")
    engine = ScriptedEngine(fail_on="r1")
    out = CachedEngine(engine, ResponseCache(url)).generate(_requests(), SamplingParams())
    assert [r.error for r in out] == [None, "HTTP 503: overloaded", None]
    # A new cache object on the same file (a later run), via pickle as a Beam worker gets it.
    reopened = pickle.loads(pickle.dumps(ResponseCache(url)))
    engine2 = ScriptedEngine()
    out2 = CachedEngine(engine2, reopened).generate(_requests(), SamplingParams())
    assert engine2.batches == [["r1"]]
    assert [r.cached for r in out2] == [True, False, True]
    assert out2[0].completions == out[0].completions


_WRITER = """
import sys
from curation.generation import ResponseCache
c = ResponseCache(sys.argv[1])
w = sys.argv[2]
for i in range(0, 300, 10):
    c.put_many({f"{w}-{j}": "v" for j in range(i, i + 10)})
    assert len(c.get_many([f"{w}-{i}"])) == 1
"""


def test_sqlite_cache_shared_by_processes_and_threads(tmp_path):
    url = str(tmp_path / "shared.sqlite")
    ResponseCache(url)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, url, f"p{k}"], env=env) for k in range(3)]
    cache = ResponseCache(url)
    threads = [
        threading.Thread(target=lambda t=t: [cache.put_many({f"t{t}-{i}": "v"}) for i in range(100)]) for t in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert len(ResponseCache(url)) == 3 * 300 + 4 * 100


# ------------------------------------------------------------------------------------------------
# Retries and payloads, against a deterministic loopback HTTP server
# ------------------------------------------------------------------------------------------------


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Replies with the next status of ``server.script`` (then 200s) and records request bodies."""

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            srv.seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            status = srv.script.pop(0) if srv.script else 200
        if status != 200:
            payload = b'{"error": "scripted"}'
        else:
            chat = self.path.endswith("/chat/completions")
            choices = [
                {"index": i, "finish_reason": "length" if i else "stop"}
                | ({"message": {"content": f"c{i}"}} if chat else {"text": f"t{i}"})
                for i in range(body["n"])
            ]
            payload = json.dumps({"choices": choices, "usage": {"prompt_tokens": 11, "completion_tokens": 7}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    srv.script, srv.seen, srv.lock = [], [], threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _client(srv, **kw) -> OpenAIEngine:
    kw.setdefault("backoff_s", 0.01)
    return OpenAIEngine(f"http://127.0.0.1:{srv.server_address[1]}/v1", "m", return_token_ids=False, **kw)


def test_retries_503_twice_then_answers(fake_server):
    fake_server.script = [503, 503]
    engine = _client(fake_server, retries=3)
    [res] = engine.generate([GenerationRequest(prompt="hi", request_id="a")], SamplingParams(n=2, max_tokens=4))
    assert res.error is None and engine.n_retries == 2 and len(fake_server.seen) == 3
    assert [(c.text, c.finish_reason) for c in res.completions] == [("t0", "stop"), ("t1", "length")]
    # usage covers both samples: 7 completion tokens split 4 + 3 when the server gives no token ids
    assert [(c.n_prompt_tokens, c.n_completion_tokens) for c in res.completions] == [(11, 4), (11, 3)]


@pytest.mark.parametrize(
    ("script", "retries", "attempts", "error"),
    [
        ([503, 503, 503], 2, 3, "gave up after 3 attempts: HTTP 503"),
        ([429, 500, 200], 2, 3, None),
        ([400], 3, 1, "HTTP 400"),  # a client error is not retried
    ],
)
def test_retry_policy(fake_server, script, retries, attempts, error):
    fake_server.script = list(script)
    [res] = _client(fake_server, retries=retries).generate([GenerationRequest(prompt="x")], SamplingParams())
    assert len(fake_server.seen) == attempts
    if error is None:
        assert res.error is None and len(res.completions) == 1
    else:
        assert res.error.startswith(error) and res.completions == []


def test_connection_errors_are_retried_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    engine = OpenAIEngine(f"http://127.0.0.1:{port}", "m", retries=2, backoff_s=0.01, timeout_s=2)
    [res] = engine.generate([GenerationRequest(prompt="x")], SamplingParams())
    assert engine.n_retries == 2 and res.error.startswith("gave up after 3 attempts: ConnectionError")


def test_http_payload_chat_with_image(fake_server, shared_data):
    jpeg = (shared_data / COCO).read_bytes()
    engine = _client(fake_server, api_key="sk-test", extra_body={"top_k": 5})
    req = GenerationRequest(messages=[{"role": "user", "content": "Describe."}], images=[jpeg], request_id="img1")
    params = SamplingParams(n=3, temperature=0.5, top_p=0.9, max_tokens=9, seed=4, stop=["\n\n"])
    [res] = engine.generate([req], params)
    [seen] = fake_server.seen
    body = seen["body"]
    assert seen["path"] == "/v1/chat/completions" and seen["auth"] == "Bearer sk-test"
    assert {k: body[k] for k in ("model", "n", "temperature", "top_p", "max_tokens", "seed", "stop", "top_k")} == {
        "model": "m", "n": 3, "temperature": 0.5, "top_p": 0.9, "max_tokens": 9,
        "seed": request_seed(4, "img1"), "stop": ["\n\n"], "top_k": 5,
    }
    [msg] = body["messages"]
    image_item, text_item = msg["content"]
    assert text_item == {"type": "text", "text": "Describe."}
    prefix = "data:image/jpeg;base64,"
    assert image_item["type"] == "image_url" and image_item["image_url"]["url"].startswith(prefix)
    assert base64.b64decode(image_item["image_url"]["url"][len(prefix):]) == jpeg
    assert [c.text for c in res.completions] == ["c0", "c1", "c2"]
    with pytest.raises(ValueError, match="raw prompt"):
        engine.generate([GenerationRequest(prompt="x", images=[jpeg])], params)


def test_engines_pickle_without_live_handles(fake_server):
    engine = _client(fake_server)
    engine.generate([GenerationRequest(prompt="x")], SamplingParams())
    clone = pickle.loads(pickle.dumps(engine))
    assert clone.model_id == engine.model_id
    [res] = clone.generate([GenerationRequest(prompt="x")], SamplingParams())
    assert res.error is None
    v = pickle.loads(pickle.dumps(VLLMEngine("/some/model", max_model_len=512)))
    assert (v.model_id, v.max_model_len, v._llm) == ("/some/model", 512, None)


# ------------------------------------------------------------------------------------------------
# Real vLLM: one in-process engine, one OpenAI-compatible server
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp() / "tiny_models"  # shared with test_models (idempotent builders)
    return {"lm": build_tiny_causal_lm(root / "lm"), "vl": build_tiny_qwen2_5_vl(root / "vl")}


@pytest.fixture(scope="session")
def vllm_env(tmp_path_factory):
    # Set before vLLM is imported in this process; spawned workers and the server inherit it.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_CACHE_ROOT"] = str(tmp_path_factory.mktemp("vllm_cache"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server_process(tiny_models, vllm_env, tmp_path_factory):
    """A real vLLM OpenAI-compatible server on loopback, serving the tiny causal LM (not yet healthy)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_models["lm"]),
        "--served-model-name", "tiny-lm", "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024", "--seed", "0",
    ]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    yield proc, f"http://127.0.0.1:{port}", log
    # The server and its engine-core / worker children form one process group.
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:  # children that outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def openai_server(server_process) -> str:
    proc, url, log = server_process
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return url
        except requests.ConnectionError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM server not healthy after 240 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def vllm_engine(request, tiny_models, vllm_env):
    # Launch the server first when this session will use it: both start in parallel.
    if any("openai_server" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("server_process")
    engine = VLLMEngine(str(tiny_models["vl"]), max_model_len=2048, limit_mm_per_prompt={"image": 2, "video": 0})
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def vl_tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_models["vl"]))


def _texts(results: list[GenerationResult]) -> list[list[str]]:
    return [[c.text for c in r.completions] for r in results]


@pytest.mark.slow
def test_vllm_prompts_n_samples_and_token_counts(vllm_engine, vl_tokenizer):
    reqs = [GenerationRequest(prompt=p, request_id=f"p{i}") for i, p in enumerate(PROMPTS)]
    results = vllm_engine.generate(reqs, SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=0))
    assert [r.request_id for r in results] == ["p0", "p1", "p2"]
    for req, res in zip(reqs, results):
        assert len(res.completions) == 2 and res.cached is False and res.model == vllm_engine.model_id
        assert res.completions[0].text != res.completions[1].text  # sample i has seed + i
        for c in res.completions:
            assert c.n_prompt_tokens == len(vl_tokenizer(req.prompt)["input_ids"])
            assert 1 <= c.n_completion_tokens <= 8
            assert (c.finish_reason == "length") == (c.n_completion_tokens == 8)


@pytest.mark.slow
def test_vllm_seeds_reproducible_and_independent_of_batch(vllm_engine):
    reqs = [GenerationRequest(prompt=p, request_id=f"p{i}") for i, p in enumerate(PROMPTS)]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=7)
    first = _texts(vllm_engine.generate(reqs, params))
    assert _texts(vllm_engine.generate(reqs, params)) == first
    # Per-request seeds come from (seed, request_id): order and batch mates do not matter.
    assert _texts(vllm_engine.generate(reqs[::-1], params)) == first[::-1]
    assert _texts(vllm_engine.generate(reqs[1:2], params)) == first[1:2]
    other = _texts(vllm_engine.generate(reqs, SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=8)))
    assert all(a != b for a, b in zip(other, first))


@pytest.mark.slow
def test_vllm_max_tokens_and_stop_strings(vllm_engine):
    req = [GenerationRequest(prompt="Once upon a time", request_id="story")]
    params = SamplingParams(temperature=1.0, max_tokens=24, seed=3)
    [full] = vllm_engine.generate(req, params)
    c = full.completions[0]
    assert (c.finish_reason, c.n_completion_tokens) == ("length", 24)
    # Stop at an ASCII word from the middle of that same (seeded) text: output ends right before it.
    m = next(m for m in re.finditer(r"[A-Za-z]{2,}", c.text) if m.start() >= 3)
    stop = m.group()
    [cut] = vllm_engine.generate(req, SamplingParams(temperature=1.0, max_tokens=24, seed=3, stop=(stop,)))
    assert cut.completions[0].text == c.text[: c.text.index(stop)]
    assert cut.completions[0].finish_reason == "stop"
    assert cut.completions[0].n_completion_tokens < 24


@pytest.mark.slow
def test_vllm_chat_text_and_image(vllm_engine, vl_tokenizer, tiny_models, shared_data):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(str(tiny_models["vl"]))
    jpeg = (shared_data / COCO).read_bytes()
    small = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("RGB").resize((56, 56)).save(small, format="PNG")
    text_msgs = [{"role": "user", "content": "Describe a kitchen."}]
    reqs = [
        GenerationRequest(messages=text_msgs, request_id="t"),
        GenerationRequest(
            messages=[{"role": "user", "content": [{"type": "image", "image": jpeg}, {"type": "text", "text": "Describe."}]}],
            request_id="i",
        ),
        GenerationRequest(messages=[{"role": "user", "content": "Describe."}], images=[small.getvalue()], request_id="s"),
        GenerationRequest(prompt="plain", request_id="p"),  # prompts and chats mix in one batch
        # A raw prompt with the model's own placeholders; the image goes as multi_modal_data.
        GenerationRequest(prompt="<|vision_start|><|image_pad|><|vision_end|>Caption:", images=[jpeg], request_id="m"),
    ]
    results = vllm_engine.generate(reqs, SamplingParams(max_tokens=5, seed=1))
    assert [r.request_id for r in results] == ["t", "i", "s", "p", "m"]
    raw = proc(text=[reqs[4].prompt], images=[Image.open(io.BytesIO(jpeg)).convert("RGB")])["input_ids"][0]
    n_caption = len(vl_tokenizer("Caption:")["input_ids"])
    assert results[4].completions[0].n_prompt_tokens == len(raw) == 1 + 15 + 1 + n_caption
    n_text = len(vl_tokenizer.apply_chat_template(text_msgs, add_generation_prompt=True, return_dict=True)["input_ids"])
    assert results[0].completions[0].n_prompt_tokens == n_text
    # Image prompts count their expanded image tokens exactly as the HF processor does:
    # 640x399 -> 140x84 px -> 15 tokens; 56x56 -> 4x4 patches -> 4 tokens.
    img_msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    template = proc.apply_chat_template(img_msgs, tokenize=False, add_generation_prompt=True)
    for res, data, n_img in [(results[1], jpeg, 15), (results[2], small.getvalue(), 4)]:
        ids = proc(text=[template], images=[Image.open(io.BytesIO(data)).convert("RGB")])["input_ids"][0]
        assert res.completions[0].n_prompt_tokens == len(ids)
        assert list(ids).count(proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == n_img
    assert all(len(r.completions) == 1 and r.error is None for r in results)


@pytest.mark.slow
def test_vllm_round_trip_through_the_cache(vllm_engine, tmp_path):
    reqs = [GenerationRequest(prompt=p, request_id=f"p{i}") for i, p in enumerate(PROMPTS)]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=11)
    cached = CachedEngine(vllm_engine, ResponseCache(str(tmp_path / "gen.sqlite")))
    first = cached.generate(reqs, params)
    again = CachedEngine(vllm_engine, ResponseCache(str(tmp_path / "gen.sqlite"))).generate(reqs, params)
    assert [r.cached for r in first] == [False] * 3 and [r.cached for r in again] == [True] * 3
    assert [r.completions for r in again] == [r.completions for r in first]
    assert _texts(vllm_engine.generate(reqs, params)) == _texts(first)


@pytest.mark.slow
def test_openai_server_completions(openai_server, tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_models["lm"]))
    engine = OpenAIEngine(openai_server, "tiny-lm", max_concurrency=4)
    reqs = [GenerationRequest(prompt=p, request_id=f"p{i}") for i, p in enumerate(PROMPTS)]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=0)
    results = engine.generate(reqs, params)
    assert [r.error for r in results] == [None] * 3
    for req, res in zip(reqs, results):
        assert len(res.completions) == 2 and res.completions[0].text != res.completions[1].text
        for c in res.completions:
            assert c.n_prompt_tokens == len(tok(req.prompt)["input_ids"])
            assert 1 <= c.n_completion_tokens <= 8
            assert (c.finish_reason == "length") == (c.n_completion_tokens == 8)
    assert _texts(engine.generate(reqs, params)) == _texts(results)  # seeded over HTTP too


@pytest.mark.slow
def test_openai_server_chat_and_concurrency(openai_server, tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_models["lm"]))
    reqs = [
        GenerationRequest(messages=[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}], request_id=f"c{i}")
        for i in range(12)
    ]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=5)
    parallel = OpenAIEngine(openai_server + "/v1", "tiny-lm", max_concurrency=8).generate(reqs, params)
    serial = OpenAIEngine(openai_server, "tiny-lm", max_concurrency=1).generate(reqs, params)
    assert [r.request_id for r in parallel] == [f"c{i}" for i in range(12)]
    assert _texts(parallel) == _texts(serial)  # order kept, results independent of concurrency
    for req, res in zip(reqs, parallel):
        n = len(tok.apply_chat_template(req.messages, add_generation_prompt=True, return_dict=True)["input_ids"])
        assert [c.n_prompt_tokens for c in res.completions] == [n, n]
    # A stop string (an ASCII word from the middle of a seeded sample) cuts the text right before it.
    first = parallel[0].completions[0]
    stop = next(m.group() for m in re.finditer(r"[A-Za-z]{2,}", first.text) if m.start() >= 2)
    cut_params = SamplingParams(**{**params.to_dict(), "n": 1, "stop": (stop,)})
    [cut] = OpenAIEngine(openai_server, "tiny-lm").generate(reqs[:1], cut_params)
    assert cut.completions[0].text == first.text[: first.text.index(stop)]
    assert cut.completions[0].finish_reason == "stop"
