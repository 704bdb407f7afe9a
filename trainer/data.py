"""Training data: WebDataset shards -> shuffled, mixed, processor-encoded, packed batches.

Flow, per rank (and per DataLoader worker):

1. :func:`resolve_sources` turns ``[KIND=]URL`` specs into :class:`ShardSource` s (a version folder
   with index.json, a dataset folder with LATEST.json, or one .tar); the kind is read from the
   index's fields when not given (image + txt: ``image_caption``; json: ``reasoning``; txt: ``text``).
2. :class:`SampleStream`: one per kind. Each epoch the kind's shard list is permuted with the seed
   (same order on every rank), split by node and then by worker (webdataset's ``split_by_node`` /
   ``split_by_worker`` rule: every n-th shard), read with :func:`curation.shards.iter_samples`
   (fsspec URLs) and shuffled through a seeded buffer. Streams repeat epochs without end.
3. :class:`PackedBatches` draws the kind of the next sample from the stage's mixture weights,
   encodes it (:func:`encode_sample`: Qwen2.5-VL chat template + processor, labels on target tokens
   only) and packs samples greedily into rows of at most ``seq_len`` tokens.

Packing keeps attention inside each sample: the model gets ``position_ids`` of shape (4, B, L):
row 0 holds text positions that restart at 0 for every sample, rows 1-3 the M-RoPE (t, h, w)
positions of each sample computed as if it were alone. With ``attention_mask=None`` and
``use_cache=False``, transformers (5.19, ``find_packed_sequence_indices``) reads sample boundaries
from row 0 and builds a block-diagonal causal mask for sdpa/eager, or varlen kernels for flash
attention. Images of all samples go in one ``pixel_values`` tensor; the ViT already attends per
image (``cu_seqlens`` from ``image_grid_thw``). Packed logits equal unpacked ones (tested).

Sample formats, read from the fields of each sample:

- ``caption``: an image (jpg, png, ...) and ``txt`` (what pipelines/image_text.py writes). User turn:
  the image and ``caption_prompt``; assistant turn: the caption. Loss on the caption (+ <|im_end|>).
- ``chat``: ``json`` with ``messages`` (what pipelines/reasoning.py writes). Images named by
  ``{"type": "image"}`` parts come from the sample's image fields, else from the json's ``images``
  URLs. Loss on every assistant turn (+ <|im_end|>).
- ``text``: ``txt`` only: a plain document; loss on all of it (pre-training style).

Exact resume: a stream's position is (epoch, samples consumed in that epoch); restoring replays the
epoch's raw tar members through the same seeded buffer without decoding them. The state saved after
a batch is taken before the sample that did not fit (it starts the next batch), so a resumed run
yields the same batches as an uninterrupted one. With DataLoader workers, batches carry their
worker's state and logical worker ids are rotated on resume (see :class:`DataState`).
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from curation import shards, storage

log = logging.getLogger(__name__)

IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class ShardSource:
    """Tar shards of one data kind (one dataset version, or one tar)."""

    kind: str
    url: str
    tar_urls: tuple[str, ...]
    num_samples: int | None = None


def _infer_kind(fields: Sequence[str]) -> str:
    exts = {f.rsplit(".", 1)[-1] for f in fields}
    if exts & set(IMAGE_EXTS) and "txt" in fields:
        return "image_caption"
    if "json" in fields:
        return "reasoning"  # chat-format SFT shards (pipelines/reasoning.py)
    if "txt" in fields:
        return "text"
    raise ValueError(f"cannot infer a data kind from fields {sorted(fields)}: name it as KIND=URL")


def resolve_source(spec: str) -> ShardSource:
    """``[KIND=]URL``: a version folder (index.json), a dataset folder (LATEST.json) or a .tar."""
    from trainer.config import KINDS

    kind: str | None = None
    url = spec
    head, sep, tail = spec.partition("=")
    if sep and "/" not in head and ":" not in head:
        kind, url = head, tail
        if kind not in KINDS:
            raise ValueError(f"{spec}: unknown data kind {kind!r}; known: {list(KINDS)}")
    url = url.rstrip("/")
    if url.endswith(".tar"):
        if not storage.exists(url):
            raise FileNotFoundError(f"shard not found: {url}")
        if kind is None:
            first = next(shards.iter_samples(url), None)
            if first is None:
                raise ValueError(f"{url}: empty shard")
            kind = _infer_kind(list(first.fields))
        return ShardSource(kind, url, (url,))
    if not storage.exists(storage.join(url, shards.INDEX_NAME)):
        latest = storage.join(url, "LATEST.json")
        if storage.exists(latest):
            url = storage.read_json(latest)["url"].rstrip("/")
        else:
            raise FileNotFoundError(f"{url}: no {shards.INDEX_NAME} (a shard version folder) nor LATEST.json")
    index = shards.read_index(url)
    if not index.shards:
        raise ValueError(f"{url}: the index lists no shards")
    return ShardSource(kind or _infer_kind(index.fields), url, tuple(index.tar_urls), index.num_samples)


def resolve_sources(specs: Sequence[str]) -> list[ShardSource]:
    return [resolve_source(s) for s in specs]


def group_by_kind(sources: Sequence[ShardSource], weights: Mapping[str, float]) -> dict[str, tuple[str, ...]]:
    """Tar URLs per kind, for the kinds the stage weights. A kind with shards and no weight is an error
    (training on data the user passed would silently not happen); a weighted kind without shards is
    skipped with a warning."""
    by_kind: dict[str, list[str]] = {}
    for s in sources:
        by_kind.setdefault(s.kind, []).extend(s.tar_urls)
    unweighted = sorted(k for k in by_kind if weights.get(k, 0) <= 0)
    if unweighted:
        raise ValueError(f"shards of kind(s) {unweighted} were given but the stage's mixture does not weight them "
                         f"(mixture: {dict(weights)}); drop those shards or add the kind to the mixture")
    missing = sorted(k for k in weights if weights[k] > 0 and k not in by_kind)
    if missing:
        log.warning("no shards for mixture kind(s) %s: their weight goes to the others", missing)
    if not by_kind:
        raise ValueError("no shards given")
    return {k: tuple(v) for k, v in sorted(by_kind.items())}


# ---------------------------------------------------------------------------------------------------
# sample streams


def worker_info() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers) as webdataset reads them (RANK/WORLD_SIZE env or
    torch.distributed, and the DataLoader worker)."""
    from webdataset.utils import pytorch_worker_info

    return pytorch_worker_info()


def split_shards(urls: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """webdataset's split_by_node then split_by_worker: every world_size-th shard from ``rank``, then
    every num_workers-th of those from ``worker``. Done here with explicit ids (not the env) so that
    a resumed run can give a DataLoader worker another logical id (see :class:`DataState`)."""
    by_node = list(itertools.islice(urls, rank, None, world_size))
    return list(itertools.islice(by_node, worker, None, num_workers))


class SampleStream:
    """Endless, seeded, shuffled raw samples of one kind for one (rank, worker); state = position."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        seed: int,
        stream_id: int,
        buffer: int,
        rank: int = 0,
        world_size: int = 1,
        worker: int = 0,
        num_workers: int = 1,
        state: Mapping[str, int] | None = None,
    ) -> None:
        self.urls = tuple(urls)
        self.seed, self.stream_id, self.buffer = seed, stream_id, buffer
        self.rank, self.world_size, self.worker, self.num_workers = rank, world_size, worker, num_workers
        parts = world_size * num_workers
        if len(self.urls) < parts:
            raise ValueError(f"{len(self.urls)} shard(s) for {world_size} rank(s) x {num_workers} worker(s): every "
                             f"reader needs one; write smaller shards (samples_per_shard) or use fewer workers")
        self.epoch = int(state["epoch"]) if state else 0
        self.consumed = 0
        self._it = self._epoch(self.epoch)
        for _ in range(int(state["consumed"]) if state else 0):  # replay without decoding
            next(self._it)
            self.consumed += 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def _epoch(self, epoch: int) -> Iterator[shards.Sample]:
        order = np.random.default_rng([self.seed, self.stream_id, epoch]).permutation(len(self.urls))
        mine = split_shards([self.urls[i] for i in order], self.rank, self.world_size, self.worker, self.num_workers)
        rng = np.random.default_rng([self.seed, self.stream_id, epoch, self.rank, self.worker, 1])
        buf: list[shards.Sample] = []
        for url in mine:
            for sample in shards.iter_samples(url):
                if len(buf) < self.buffer:
                    buf.append(sample)
                    continue
                j = int(rng.integers(len(buf)))
                out, buf[j] = buf[j], sample
                yield out
        for j in rng.permutation(len(buf)):
            yield buf[j]

    def __iter__(self) -> SampleStream:
        return self

    def __next__(self) -> shards.Sample:
        for _ in range(2):
            try:
                sample = next(self._it)
            except StopIteration:
                self.epoch += 1
                self.consumed = 0
                self._it = self._epoch(self.epoch)
                continue
            self.consumed += 1
            return sample
        raise ValueError(f"stream {self.stream_id}: an epoch over {len(self.urls)} shard(s) yielded no sample")


# ---------------------------------------------------------------------------------------------------
# encoding


@dataclass
class Encoded:
    """One sample as model inputs: token ids, labels (-100 off target), M-RoPE positions (3, L),
    and its images' patches and grids (or None)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    mrope: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    kind: str = ""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class SkipSample(Exception):
    """A sample that cannot be used; ``reason`` is counted (img2dataset style: a value, not a crash)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def sample_format(fields: Mapping[str, bytes]) -> str:
    """``chat`` (json with messages), ``caption`` (image + txt), ``text`` (txt only) or ``unsupported``."""
    if "json" in fields:
        try:
            obj = json.loads(fields["json"])
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            return "chat"
    if "txt" in fields and _image_fields(fields):
        return "caption"
    if "txt" in fields:
        return "text"
    return "unsupported"


def _image_fields(fields: Mapping[str, bytes]) -> list[str]:
    return sorted(f for f in fields if f.rsplit(".", 1)[-1] in IMAGE_EXTS)


def load_image(data: bytes):  # noqa: ANN201 - PIL.Image
    """Decode with Pillow; transparent images are composited on white (clip-art stamps stay visible)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def _count_images(messages: Sequence[Mapping[str, Any]]) -> int:
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            n += sum(1 for part in content if isinstance(part, Mapping)
                     and (part.get("type") == "image" or "image" in part or "image_url" in part))
    return n


def mrope_positions(input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None, image_token_id: int,
                    spatial_merge_size: int) -> torch.Tensor:
    """M-RoPE (t, h, w) positions of one unpacked sample, shape (3, L), as Qwen2.5-VL's
    ``get_rope_index`` computes them for images: text advances all three by 1; an image block of
    (t, h, w) merged patches gets (start + t_i, start + h_i, start + w_i) and the text after it starts at
    start + max(h, w). Computed here so data workers need no model (tested equal to the model's)."""
    ids = input_ids.tolist()
    grids = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    out: list[torch.Tensor] = []
    pos, i, n = 0, 0, len(ids)
    while i < n:
        if ids[i] != image_token_id:
            j = i
            while j < n and ids[j] != image_token_id:
                j += 1
            out.append(torch.arange(pos, pos + j - i).expand(3, -1))
            pos += j - i
            i = j
            continue
        t, h, w = next(grids)
        h, w = h // spatial_merge_size, w // spatial_merge_size
        tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
        out.append(torch.stack([tt, hh, ww]).reshape(3, -1) + pos)
        pos += max(h, w)
        i += t * h * w
    return torch.cat(out, dim=1) if out else torch.zeros(3, 0, dtype=torch.long)


@dataclass
class Encoder:
    """Sample -> :class:`Encoded` through a Qwen2.5-VL processor (chat template, image patches)."""

    processor: Any
    caption_prompt: str = "Describe the image."
    min_pixels: int | None = None
    max_pixels: int | None = None
    spatial_merge_size: int = 2

    def __post_init__(self) -> None:
        tok = self.processor.tokenizer
        self.tokenizer = tok
        self.im_start = tok.convert_tokens_to_ids("<|im_start|>")
        self.im_end = tok.convert_tokens_to_ids("<|im_end|>")
        self.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
        self.video_token_id = tok.convert_tokens_to_ids("<|video_pad|>")
        # Vision tokens are inputs, never targets, even inside an assistant turn (interleaved documents
        # put their images in the assistant turn so that all of the document's text is a target).
        self.vision_ids = torch.tensor([tok.convert_tokens_to_ids(t) for t in
                                        ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")])
        self.assistant_ids = tok("assistant", add_special_tokens=False).input_ids
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
        self.eos_text = tok.eos_token or "<|im_end|>"
        ip = getattr(self.processor, "image_processor", None)
        self.spatial_merge_size = int(getattr(ip, "merge_size", self.spatial_merge_size) or self.spatial_merge_size)

    def _images_kwargs(self) -> dict[str, Any]:
        if self.min_pixels is None and self.max_pixels is None:
            return {}
        size = dict(getattr(self.processor.image_processor, "size", None) or {})
        if self.min_pixels is not None:
            size["shortest_edge"] = self.min_pixels
        if self.max_pixels is not None:
            size["longest_edge"] = self.max_pixels
        return {"images_kwargs": {"size": size}}

    def _process(self, text: str, images: list) -> dict[str, torch.Tensor]:
        kwargs = self._images_kwargs() if images else {}
        return self.processor(text=[text], images=images or None, return_tensors="pt", **kwargs)

    def assistant_mask(self, ids: Sequence[int]) -> list[bool]:
        """True on the content and closing <|im_end|> of every assistant turn.

        Scans tokens for <|im_start|> + 'assistant' + a newline token; targets run from the token
        after the newline up to and including the next <|im_end|> (the model must learn to stop).
        """
        mask = [False] * len(ids)
        a = self.assistant_ids
        i, n = 0, len(ids)
        while i < n:
            if ids[i] == self.im_start and list(ids[i + 1:i + 1 + len(a)]) == a:
                j = i + 1 + len(a)
                if j < n and self.tokenizer.decode([ids[j]]).startswith("\n"):
                    j += 1
                while j < n and ids[j] != self.im_end:
                    mask[j] = True
                    j += 1
                if j < n:
                    mask[j] = True
                i = j + 1
            else:
                i += 1
        return mask

    def messages_for(self, sample: shards.Sample) -> tuple[str, list, list]:
        """(format, messages, images) of a raw sample."""
        fmt = sample_format(sample.fields)
        if fmt == "caption":
            caption = sample.fields["txt"].decode("utf-8").strip()
            if not caption:
                raise SkipSample("empty_text")
            img = load_image(sample.fields[_image_fields(sample.fields)[0]])
            user: list[dict[str, Any]] = [{"type": "image"}]
            if self.caption_prompt:
                user.append({"type": "text", "text": self.caption_prompt})
            return fmt, [{"role": "user", "content": user}, {"role": "assistant", "content": caption}], [img]
        if fmt == "chat":
            obj = json.loads(sample.fields["json"])
            messages = obj["messages"]
            want = _count_images(messages)
            names = _image_fields(sample.fields)
            if want and len(names) == want:
                images = [load_image(sample.fields[n]) for n in names]
            elif want:
                # image URLs in the parts themselves ({"type": "image", "image": url}), else in "images"
                urls = [u for m in messages if isinstance(m.get("content"), list) for part in m["content"]
                        if isinstance(part, Mapping) and isinstance(u := part.get("image") or part.get("image_url"), str)]
                if len(urls) != want:
                    urls = list(obj.get("images") or [])
                if len(urls) != want:
                    raise SkipSample("image_count_mismatch", f"{want} image parts, {len(names)} fields, {len(urls)} urls")
                images = [load_image(storage.read_bytes(u)) for u in urls]
            else:
                images = []
            if not any(m.get("role") == "assistant" for m in messages):
                raise SkipSample("no_target_tokens")
            return fmt, messages, images
        if fmt == "text":
            return fmt, [], []
        raise SkipSample("unsupported_format", f"fields {sorted(sample.fields)}")

    def encode(self, sample: shards.Sample, kind: str = "") -> Encoded:
        """Model inputs of one sample; :class:`SkipSample` (with a reason) when it is unusable."""
        try:
            return self._encode(sample, kind)
        except SkipSample:
            raise
        except Exception as e:  # noqa: BLE001 - a broken sample is counted, not fatal
            raise SkipSample("decode_error", f"{type(e).__name__}: {e}") from e

    def _encode(self, sample: shards.Sample, kind: str) -> Encoded:
        fmt, messages, images = self.messages_for(sample)
        if fmt == "text":
            text = sample.fields["txt"].decode("utf-8").strip()
            if not text:
                raise SkipSample("empty_text")
            ids = torch.tensor(self.tokenizer(text + self.eos_text, add_special_tokens=False).input_ids)
            labels = ids.clone()
            pixel_values = grid = None
        else:
            text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            enc = self._process(text, images)
            ids = enc["input_ids"][0]
            mask = torch.tensor(self.assistant_mask(ids.tolist()), dtype=torch.bool)
            mask &= ~torch.isin(ids, self.vision_ids)
            labels = torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX))
            pixel_values, grid = enc.get("pixel_values"), enc.get("image_grid_thw")
        if (ids == self.video_token_id).any():
            raise SkipSample("video_not_supported")
        labels[0] = IGNORE_INDEX  # nothing precedes a sample's first token in a packed row
        if not (labels != IGNORE_INDEX).any():
            raise SkipSample("no_target_tokens")
        mrope = mrope_positions(ids, grid, self.image_token_id, self.spatial_merge_size)
        return Encoded(ids, labels, mrope, pixel_values, grid, kind)

    def fit(self, enc: Encoded, seq_len: int) -> Encoded:
        """Truncate a sample longer than ``seq_len`` (text after the last image only); else skip it."""
        if len(enc) <= seq_len:
            return enc
        if enc.image_grid_thw is not None and (enc.input_ids[seq_len:] == self.image_token_id).any():
            raise SkipSample("too_long")
        labels = enc.labels[:seq_len]
        if not (labels != IGNORE_INDEX).any():
            raise SkipSample("too_long")
        return Encoded(enc.input_ids[:seq_len], labels, enc.mrope[:, :seq_len], enc.pixel_values,
                       enc.image_grid_thw, enc.kind)


# ---------------------------------------------------------------------------------------------------
# packing


def collate_rows(rows: Sequence[Sequence[Encoded]], pad_token_id: int, pad_to_multiple_of: int = 1) -> dict[str, Any]:
    """Packed rows -> model inputs: input_ids, labels (B, L), position_ids (4, B, L), pixel_values,
    image_grid_thw, plus counts. Padding at the end of a row is one more segment (positions from 0,
    labels -100), so it never joins a sample's attention block."""
    lengths = [sum(len(e) for e in row) for row in rows]
    width = max(lengths)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    b = len(rows)
    input_ids = torch.full((b, width), pad_token_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((4, b, width), dtype=torch.long)
    pixels, grids = [], []
    kinds: Counter[str] = Counter()
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e)
            input_ids[r, at:at + n] = e.input_ids
            labels[r, at:at + n] = e.labels
            position_ids[0, r, at:at + n] = torch.arange(n)
            position_ids[1:, r, at:at + n] = e.mrope
            if e.pixel_values is not None:
                pixels.append(e.pixel_values)
                grids.append(e.image_grid_thw)
            kinds[e.kind] += 1
            at += n
        if at < width:
            position_ids[:, r, at:] = torch.arange(width - at)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "pixel_values": torch.cat(pixels) if pixels else None,
        "image_grid_thw": torch.cat(grids) if grids else None,
        "num_samples": sum(len(r) for r in rows),
        "num_tokens": sum(lengths),
        "num_target_tokens": int((labels != IGNORE_INDEX).sum()),
        "kinds": dict(sorted(kinds.items())),
    }


@dataclass
class PackedBatches:
    """Endless packed batches from per-kind streams mixed by weight; ``state_dict()`` after each batch."""

    streams_urls: Mapping[str, Sequence[str]]
    weights: Mapping[str, float]
    encoder: Encoder
    seq_len: int
    micro_batch_size: int = 1
    seed: int = 0
    shuffle_buffer: int = 1000
    pad_to_multiple_of: int = 8
    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1
    state: Mapping[str, Any] | None = None
    counters: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.kinds = sorted(self.streams_urls)
        w = np.array([self.weights[k] for k in self.kinds], dtype=np.float64)
        self.probs = w / w.sum()
        st = self.state or {}
        self.streams = {
            k: SampleStream(self.streams_urls[k], seed=self.seed, stream_id=i, buffer=self.shuffle_buffer,
                            rank=self.rank, world_size=self.world_size, worker=self.worker,
                            num_workers=self.num_workers, state=(st.get("streams") or {}).get(k))
            for i, k in enumerate(self.kinds)
        }
        self.rng = np.random.default_rng([self.seed, self.rank, self.worker, 2])
        if st.get("rng") is not None:
            self.rng.bit_generator.state = copy.deepcopy(st["rng"])
        self.counters = Counter(st.get("counters") or {})
        self._carry: tuple[Encoded, dict[str, Any]] | None = None
        self._state = self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        return {"streams": {k: s.state_dict() for k, s in self.streams.items()},
                "rng": copy.deepcopy(self.rng.bit_generator.state), "counters": dict(self.counters)}

    def state_dict(self) -> dict[str, Any]:
        """Position after the last batch returned (restoring it yields the next batch again)."""
        return copy.deepcopy(self._state)

    def _draw(self) -> Encoded:
        """Next usable sample (skipped ones are counted by reason)."""
        while True:
            kind = self.kinds[int(self.rng.choice(len(self.kinds), p=self.probs))]
            sample = next(self.streams[kind])
            self.counters["samples_read"] += 1
            try:
                return self.encoder.fit(self.encoder.encode(sample, kind), self.seq_len)
            except SkipSample as e:
                self.counters[f"skipped_{e.reason}"] += 1
                log.debug("skipped %s (%s): %s", sample.key, kind, e)

    def __iter__(self) -> PackedBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        rows: list[list[Encoded]] = []
        carry, self._carry = self._carry, None
        while len(rows) < self.micro_batch_size:
            row: list[Encoded] = []
            used = 0
            while True:
                if carry is not None:
                    enc, snap = carry
                    carry = None
                else:
                    snap = self._snapshot()
                    enc = self._draw()
                if row and used + len(enc) > self.seq_len:
                    carry = (enc, snap)
                    break
                row.append(enc)
                used += len(enc)
                self.counters["samples_packed"] += 1
                if used == self.seq_len:
                    break
            rows.append(row)
        if carry is not None:
            # The carried sample opens the next batch: the saved position is the one just before it
            # was drawn (its counters too, since only its own draw happened after).
            self._state = carry[1]
            self._carry = carry
        else:
            self._state = self._snapshot()
        batch = collate_rows(rows, self.encoder.pad_token_id, self.pad_to_multiple_of)
        batch["counters"] = dict(self.counters)
        return batch


# ---------------------------------------------------------------------------------------------------
# workers and resumable state


class PackedDataset(torch.utils.data.IterableDataset):
    """:class:`PackedBatches` for a ``DataLoader(batch_size=None, num_workers=W)``.

    Worker ``w`` plays logical worker ``(w + rotation) % W``: DataLoader always asks worker 0 first,
    so a resumed run rotates ids to hand the next batch to the logical worker that was due.
    Each batch carries ``_worker`` and ``_state`` (its logical worker's position after it).
    """

    def __init__(self, make: Any, num_workers: int, rotation: int = 0,
                 states: Mapping[int, Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        self.make, self.num_workers, self.rotation = make, max(num_workers, 1), rotation
        self.states = dict(states or {})

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        physical = info.id if info is not None else 0
        logical = (physical + self.rotation) % self.num_workers
        batches = self.make(worker=logical, num_workers=self.num_workers, state=self.states.get(logical))
        for batch in batches:
            batch["_worker"] = logical
            batch["_state"] = batches.state_dict()
            yield batch


@dataclass
class DataState:
    """The data position of a run: batches consumed and the state of every logical worker."""

    num_workers: int = 0
    consumed: int = 0
    workers: dict[int, dict[str, Any]] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "consumed": self.consumed,
                "workers": {str(k): v for k, v in self.workers.items()}}

    def counters(self) -> dict[str, int]:
        """Sample counters (read, packed, skipped by reason) summed over the logical workers."""
        total: Counter[str] = Counter()
        for st in self.workers.values():
            total.update(st.get("counters") or {})
        return dict(sorted(total.items()))

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        self.num_workers = int(d["num_workers"])
        self.consumed = int(d["consumed"])
        self.workers = {int(k): v for k, v in d["workers"].items()}


def batch_iterator(make: Any, data_state: DataState, num_workers: int = 0) -> Iterator[dict[str, Any]]:
    """Batches from ``make(worker=, num_workers=, state=)`` (a :class:`PackedBatches` factory),
    in-process (``num_workers=0``) or through a DataLoader, resuming from and updating ``data_state``.
    """
    if data_state.consumed and data_state.num_workers != num_workers:
        raise ValueError(f"the checkpoint was written with num_workers={data_state.num_workers}; resume with the "
                         f"same number (got {num_workers}) to continue the data exactly")
    data_state.num_workers = num_workers
    if num_workers == 0:
        batches = make(worker=0, num_workers=1, state=data_state.workers.get(0))
        for batch in batches:
            data_state.workers[0] = batches.state_dict()
            data_state.consumed += 1
            yield batch
        return
    ds = PackedDataset(make, num_workers, rotation=data_state.consumed % num_workers, states=data_state.workers)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, persistent_workers=False)
    for batch in loader:
        data_state.workers[int(batch.pop("_worker"))] = batch.pop("_state")
        data_state.consumed += 1
        yield batch
