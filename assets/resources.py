"""Resources: where data lives, which CLIP model scores, how Beam runs."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from curation import storage

REPO = Path(__file__).resolve().parents[1]


def default_root() -> str:
    return os.environ.get("VLM_DATA_ROOT", str(REPO / "data"))


# Op tag of the steps that start a generation engine (vLLM): the executor runs them one at a time.
ENGINE_TAG = {"curation/engine": "generation"}

class StorageResource(dg.ConfigurableResource):
    """The storage root: a local path or any fsspec URL (s3://, gs://). Layout: DESIGN.md section 2."""

    root: str = default_root()

    def url(self, *parts: str) -> str:
        return storage.join(self.root, *parts)


class ClipModelResource(dg.ConfigurableResource):
    """The open_clip model that scores pairs: an architecture plus a checkpoint, or a local-dir: folder.

    Default: the tiny random-init model that `make run` builds (models/clip-tiny under the storage
    root). Real use: model='ViT-L-14', pretrained='/ckpt/open_clip_pytorch_model.bin'.
    """

    model: str = "local-dir:models/clip-tiny"
    pretrained: str | None = None
    batch_size: int = 64


class BeamResource(dg.ConfigurableResource):
    """How pipelines run: the runner and its flags (default: FnApiRunner in process, offline)."""

    runner: str = "FnApiRunner"
    args: list[str] = []

    def argv(self) -> list[str]:
        return [f"--runner={self.runner}", *self.args]


class GenerationResource(dg.ConfigurableResource):
    """A text or vision-language model behind the generation interface.

    kind 'vllm': in-process vLLM over ``model`` (a checkpoint folder, relative to the storage root,
    or a hub id where a hub is reachable). kind 'openai': any OpenAI-compatible server at ``base_url``
    serving ``model`` (e.g. `python -m vllm.entrypoints.openai.api_server` on a GPU box).
    kind 'factory': ``model`` = 'package.module:callable' returning a custom engine.
    """

    kind: str = "vllm"
    model: str = "models/tiny-causal-lm"
    base_url: str | None = None
    api_key: str | None = None
    dtype: str = "float32"  # 'bfloat16' on GPUs
    enforce_eager: bool = True
    max_model_len: int = 4096

    def spec(self):  # noqa: ANN201 - pipelines.generation.EngineSpec
        from pipelines.generation import EngineSpec

        options = {"dtype": self.dtype, "enforce_eager": self.enforce_eager, "max_model_len": self.max_model_len} \
            if self.kind == "vllm" else {}
        return EngineSpec(self.kind, self.model, base_url=self.base_url, api_key=self.api_key, options=options)
