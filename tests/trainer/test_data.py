"""Data: sources, split/shuffle/resume of streams, encoding with target-only labels, packing that keeps
attention inside each sample (packed logits == unpacked logits), and exact resume with workers."""

from __future__ import annotations

import io
import json
import logging

import pytest
import torch
from PIL import Image

from curation import shards, storage
from trainer_fixtures import SFT_SAMPLES, caption_rows, caption_sample
from trainer import data as D

SEQ = 384


@pytest.fixture(scope="module")
def processor(tiny_vl):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(tiny_vl))


@pytest.fixture(scope="module")
def encoder(processor):
    return D.Encoder(processor)


@pytest.fixture(scope="module")
def model(tiny_vl):
    from trainer.model import load_model

    return load_model(str(tiny_vl)).eval()


def _urls(caption_shards, sft_shards):
    return D.group_by_kind(D.resolve_sources([caption_shards, sft_shards]), {"image_caption": 0.5, "reasoning": 0.5})


# -- sources -------------------------------------------------------------------------------------


def test_sources_infer_kind_and_follow_latest(caption_shards, sft_shards, tmp_path):
    cap, sft = D.resolve_sources([caption_shards, sft_shards])
    assert (cap.kind, len(cap.tar_urls), cap.num_samples) == ("image_caption", 3, 12)
    assert (sft.kind, len(sft.tar_urls), sft.num_samples) == ("reasoning", 2, 3)
    one = D.resolve_source(f"{caption_shards}/00001.tar")
    assert (one.kind, one.tar_urls) == ("image_caption", (f"{caption_shards}/00001.tar",))
    named = D.resolve_source(f"interleaved={caption_shards}")
    assert named.kind == "interleaved"
    latest = tmp_path / "image_text"
    storage.write_json(str(latest / "LATEST.json"), {"version": "v1", "url": caption_shards})
    assert D.resolve_source(str(latest)).tar_urls == cap.tar_urls
    with pytest.raises(ValueError, match="unknown data kind 'audio'"):
        D.resolve_source(f"audio={caption_shards}")
    with pytest.raises(FileNotFoundError, match="no index.json"):
        D.resolve_source(str(tmp_path / "nothing"))


def test_group_by_kind_refuses_unweighted_shards_and_warns_on_missing(caption_shards, sft_shards, caplog):
    srcs = D.resolve_sources([caption_shards, sft_shards])
    with pytest.raises(ValueError, match=r"kind\(s\) \['reasoning'\] were given but the stage's mixture"):
        D.group_by_kind(srcs, {"image_caption": 1.0})
    with caplog.at_level(logging.WARNING):
        got = D.group_by_kind(srcs[:1], {"image_caption": 0.6, "interleaved": 0.4})
    assert list(got) == ["image_caption"]
    assert "no shards for mixture kind(s) ['interleaved']" in caplog.text


# -- streams -------------------------------------------------------------------------------------


def test_split_shards_follows_webdataset_node_then_worker():
    urls = [f"s{i}" for i in range(10)]
    assert D.split_shards(urls, 0, 1, 0, 1) == urls
    assert D.split_shards(urls, 1, 2, 0, 1) == ["s1", "s3", "s5", "s7", "s9"]
    assert D.split_shards(urls, 1, 2, 1, 2) == ["s3", "s7"]
    parts = [D.split_shards(urls, r, 2, w, 3) for r in range(2) for w in range(3)]
    assert sorted(sum(parts, [])) == sorted(urls)  # disjoint and complete


def test_stream_shuffles_covers_each_epoch_and_resumes(caption_shards):
    urls = D.resolve_source(caption_shards).tar_urls
    s = D.SampleStream(urls, seed=0, stream_id=0, buffer=3)
    keys = [next(s).key for _ in range(24)]
    all_keys = {x.key for u in urls for x in shards.iter_samples(u)}
    assert set(keys[:12]) == all_keys == set(keys[12:])  # each epoch yields every sample once
    assert keys[:12] != keys[12:]  # and reshuffles
    assert keys[:12] != [x.key for u in urls for x in shards.iter_samples(u)]
    again = D.SampleStream(urls, seed=0, stream_id=0, buffer=3)
    assert [next(again).key for _ in range(24)] == keys  # seeded
    s2 = D.SampleStream(urls, seed=0, stream_id=0, buffer=3)
    for _ in range(17):
        next(s2)
    assert s2.state_dict() == {"epoch": 1, "consumed": 5}
    resumed = D.SampleStream(urls, seed=0, stream_id=0, buffer=3, state=s2.state_dict())
    assert [next(resumed).key for _ in range(7)] == keys[17:24]
    other = D.SampleStream(urls, seed=1, stream_id=0, buffer=3)
    assert [next(other).key for _ in range(12)] != keys[:12]


def test_stream_needs_a_shard_per_reader(caption_shards):
    urls = D.resolve_source(caption_shards).tar_urls
    with pytest.raises(ValueError, match=r"3 shard\(s\) for 2 rank\(s\) x 2 worker\(s\)"):
        D.SampleStream(urls, seed=0, stream_id=0, buffer=3, world_size=2, num_workers=2)
    r1 = D.SampleStream(urls, seed=0, stream_id=0, buffer=100, rank=1, world_size=3)
    assert len({next(r1).key for _ in range(4)}) == 4  # one shard of 4 samples per epoch


# -- encoding ------------------------------------------------------------------------------------


def _targets(encoder, enc) -> str:
    ids = [t for t, lab in zip(enc.input_ids.tolist(), enc.labels.tolist()) if lab != D.IGNORE_INDEX]
    return encoder.tokenizer.decode(ids)


def test_caption_sample_targets_only_the_caption(shared_data, encoder):
    row = caption_rows(shared_data, 1, 0)[0]
    enc = encoder.encode(caption_sample(row), "image_caption")
    assert _targets(encoder, enc) == row["caption"].strip() + "<|im_end|>"
    n_img = int((enc.input_ids == encoder.image_token_id).sum())
    t, h, w = enc.image_grid_thw[0].tolist()
    assert n_img == t * h * w // 4 and enc.pixel_values.shape[0] == t * h * w
    text = encoder.tokenizer.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert "<|vision_end|>Describe the image.<|im_end|>\n<|im_start|>assistant\n" in text


def test_chat_sample_targets_every_assistant_turn(encoder):
    s = shards.Sample("x", {"json": json.dumps(SFT_SAMPLES[2]).encode()})
    assert _targets(encoder, encoder.encode(s, "reasoning")) == "4<|im_end|>6<|im_end|>"
    s0 = shards.Sample("y", {"json": json.dumps(SFT_SAMPLES[0]).encode()})
    assert _targets(encoder, encoder.encode(s0, "reasoning")) == (
        "<think>\n60 * 3 = 180.\n</think>\nThe final answer is \\boxed{180}.<|im_end|>")


def test_text_sample_targets_all_but_the_first_token_and_truncates(encoder):
    enc = encoder.encode(shards.Sample("t", {"txt": b"The sum of the angles in a triangle is 180 degrees."}), "text")
    assert enc.labels[0] == D.IGNORE_INDEX
    assert torch.equal(enc.labels[1:], enc.input_ids[1:])
    assert encoder.tokenizer.decode(enc.input_ids).endswith("degrees.<|im_end|>")
    cut = encoder.fit(enc, 10)
    assert len(cut) == 10 and torch.equal(cut.input_ids, enc.input_ids[:10])


def test_bad_samples_are_counted_reasons(shared_data, encoder):
    def reason(sample, seq=10_000):
        with pytest.raises(D.SkipSample) as e:
            encoder.fit(encoder.encode(sample, "k"), seq)
        return e.value.reason

    assert reason(shards.Sample("a", {"jpg": b"not a jpeg", "txt": b"A cat."})) == "decode_error"
    assert reason(shards.Sample("b", {"cls": b"3"})) == "unsupported_format"
    no_asst = {"messages": [{"role": "user", "content": "hi"}]}
    assert reason(shards.Sample("c", {"json": json.dumps(no_asst).encode()})) == "no_target_tokens"
    img_msg = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                            {"role": "assistant", "content": "A cat."}], "images": []}
    assert reason(shards.Sample("d", {"json": json.dumps(img_msg).encode()})) == "image_count_mismatch"
    assert reason(caption_sample(caption_rows(shared_data, 1, 0)[0]), seq=30) == "too_long"  # would cut the image


def test_chat_sample_images_from_fields_or_urls(shared_data, encoder):
    path = shared_data / "image_caption/coco_mini/images/train2017/000000493652.jpg"
    msg = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
                        {"role": "assistant", "content": "A living room."}], "images": [str(path)]}
    by_url = encoder.encode(shards.Sample("u", {"json": json.dumps(msg).encode()}))
    by_field = encoder.encode(shards.Sample("f", {"json": json.dumps(msg).encode(), "jpg": path.read_bytes()}))
    assert torch.equal(by_url.input_ids, by_field.input_ids)
    assert torch.equal(by_url.pixel_values, by_field.pixel_values)
    assert _targets(encoder, by_url) == "A living room.<|im_end|>"


def test_interleaved_document_targets_its_text_never_the_image_tokens(shared_data, encoder):
    """An interleaved document is one assistant turn of text and images: all of its text is a target,
    the vision tokens (<|vision_start|>, image pads, <|vision_end|>) are inputs only."""
    path = shared_data / "image_caption/coco_mini/images/train2017/000000493652.jpg"
    doc = {"messages": [{"role": "assistant", "content": [
        {"type": "text", "text": "A living room."}, {"type": "image"}, {"type": "text", "text": "Two sofas face a TV."}]}]}
    enc = encoder.encode(shards.Sample("doc", {"json": json.dumps(doc).encode(), "img000.jpg": path.read_bytes()}),
                         "interleaved")
    assert _targets(encoder, enc) == "A living room.Two sofas face a TV.<|im_end|>"
    vision = torch.isin(enc.input_ids, encoder.vision_ids)
    assert int(vision.sum()) == int((enc.input_ids == encoder.image_token_id).sum()) + 2
    assert (enc.labels[vision] == D.IGNORE_INDEX).all()


def test_transparent_png_is_composited_on_white(shared_data):
    row = caption_rows(shared_data, 0, 1)[0]
    raw = row["path"].read_bytes()
    assert Image.open(io.BytesIO(raw)).mode == "RGBA"
    img = D.load_image(raw)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)


# -- packing -------------------------------------------------------------------------------------


def test_mrope_positions_equal_the_models(model, caption_shards, encoder):
    for s in shards.iter_samples(D.resolve_source(caption_shards).tar_urls[0]):
        enc = encoder.encode(s, "image_caption")
        mm = (enc.input_ids == encoder.image_token_id).long()[None]
        ref, _ = model.model.get_rope_index(enc.input_ids[None], mm_token_type_ids=mm, image_grid_thw=enc.image_grid_thw)
        assert torch.equal(enc.mrope, ref[:, 0])


def test_packed_logits_equal_unpacked(model, caption_shards, sft_shards, encoder, monkeypatch):
    pb = D.PackedBatches(_urls(caption_shards, sft_shards), {"image_caption": 0.5, "reasoning": 0.5}, encoder,
                         seq_len=SEQ, micro_batch_size=2, shuffle_buffer=2)
    rows: list[list[D.Encoded]] = []
    orig = D.collate_rows

    def spy(r, *a, **k):
        rows.extend(r)
        return orig(r, *a, **k)

    monkeypatch.setattr(D, "collate_rows", spy)  # to see the rows as packed
    batch = next(pb)
    assert batch["input_ids"].shape[0] == 2 and batch["num_samples"] >= 3 and batch["pixel_values"] is not None
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"], use_cache=False).logits
        for r, row in enumerate(rows):
            at = 0
            for e in row:
                kw = {"pixel_values": e.pixel_values, "image_grid_thw": e.image_grid_thw} if e.pixel_values is not None else {}
                alone = model(input_ids=e.input_ids[None], position_ids=e.mrope[:, None], use_cache=False, **kw).logits[0]
                assert (packed[r, at:at + len(e)] - alone).abs().max() < 1e-4
                at += len(e)


def test_packed_rows_fit_and_resume_exactly(caption_shards, sft_shards, encoder):
    urls = _urls(caption_shards, sft_shards)
    w = {"image_caption": 0.5, "reasoning": 0.5}

    def make(state=None):
        return D.PackedBatches(urls, w, encoder, seq_len=SEQ, micro_batch_size=2, shuffle_buffer=3, state=state)

    pb = make()
    ref = [next(pb) for _ in range(6)]
    for b in ref:
        assert b["input_ids"].shape[1] % 8 == 0
        assert all(int((row != encoder.pad_token_id).sum()) <= SEQ for row in b["input_ids"])
        assert b["num_target_tokens"] == int((b["labels"] != D.IGNORE_INDEX).sum())
        # text positions restart at 0 for every sample and for the padding
        assert int((b["position_ids"][0] == 0).sum()) >= b["num_samples"]
    assert sum(b["kinds"].get("image_caption", 0) for b in ref) > 0 and sum(b["kinds"].get("reasoning", 0) for b in ref) > 0
    pb2 = make()
    for _ in range(3):
        next(pb2)
    st = json.loads(json.dumps(pb2.state_dict()))  # the state is plain JSON
    resumed = make(st)
    for want in ref[3:]:
        got = next(resumed)
        for k in ("input_ids", "labels", "position_ids", "pixel_values", "image_grid_thw"):
            assert (got[k] is None and want[k] is None) or torch.equal(got[k], want[k]), k
        assert got["counters"] == want["counters"]


def test_worker_batches_resume_exactly(caption_shards, sft_shards, encoder):
    import functools

    from trainer.config import load_stage
    from trainer.train import _make_batches

    cfg = load_stage(3).with_overrides(seq_len=SEQ, shuffle_buffer=2, micro_batch_size=1)
    make = functools.partial(_make_batches, urls=_urls(caption_shards, sft_shards), cfg=cfg, encoder=encoder,
                             rank=0, world_size=1)
    full = D.DataState()
    it = D.batch_iterator(make, full, num_workers=2)
    ref = [next(it)["input_ids"] for _ in range(5)]
    del it
    part = D.DataState()
    it = D.batch_iterator(make, part, num_workers=2)
    assert [torch.equal(next(it)["input_ids"], ref[i]) for i in range(3)] == [True] * 3
    del it
    saved = json.loads(json.dumps(part.state_dict()))
    resumed_state = D.DataState()
    resumed_state.load_state_dict(saved)
    assert resumed_state.consumed == 3
    it = D.batch_iterator(make, resumed_state, num_workers=2)  # logical workers rotate: worker 1 is due
    assert [torch.equal(next(it)["input_ids"], ref[i]) for i in (3, 4)] == [True, True]
    del it
    with pytest.raises(ValueError, match="num_workers=2; resume with the same number"):
        next(D.batch_iterator(make, resumed_state, num_workers=0))
