"""Generation inside Beam: a RunInference model handler over the engines of curation.generation.

``RunInference(GenerationModelHandler(spec, params))`` batches requests, loads one engine per worker
(optionally shared across the worker's processes, so one copy of the vLLM weights per machine), and answers through the persistent response cache when ``spec.cache_url`` is set,
so a re-run never pays for the same generation twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from curation import generation, storage


@dataclass(frozen=True)
class EngineSpec:
    """A picklable description of an engine: what a Beam worker (or a Dagster resource) builds.

    kind 'vllm': ``model`` is a local checkpoint folder or hub id loaded by in-process vLLM.
    kind 'openai': ``model`` is the served model name at ``base_url`` (any OpenAI-compatible server).
    kind 'factory': ``model`` is ``'package.module:callable'`` returning an Engine (called with
    ``options``): a custom client (TGI, SGLang, an internal service) without changing this code.
    """

    kind: str
    model: str
    base_url: str | None = None
    api_key: str | None = None
    cache_url: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> generation.Engine:
        if self.kind == "vllm":
            engine: generation.Engine = generation.VLLMEngine(self.model, **self.options)
        elif self.kind == "openai":
            if not self.base_url:
                raise ValueError("an 'openai' engine needs base_url")
            engine = generation.OpenAIEngine(self.base_url, self.model, api_key=self.api_key, **self.options)
        elif self.kind == "factory":
            import importlib

            module, _, attr = self.model.partition(":")
            engine = getattr(importlib.import_module(module), attr)(**self.options)
        else:
            raise ValueError(f"unknown engine kind {self.kind!r} (vllm | openai | factory)")
        if self.cache_url:
            engine = generation.CachedEngine(engine, generation.ResponseCache(self.cache_url))
        return engine


def resolve_spec(root: str, spec: EngineSpec) -> EngineSpec:
    """A spec with relative vLLM model folders resolved under the storage root (``models/tiny-...``), and
    the response cache at ``<root>/cache/generation.sqlite`` unless the spec names one."""
    model = spec.model
    if spec.kind == "vllm" and not model.startswith("/") and "://" not in model and storage.exists(storage.join(root, model)):
        model = storage.local_path(storage.join(root, model)) or model
    return replace(spec, model=model, cache_url=spec.cache_url or storage.join(root, "cache", "generation.sqlite"))


class GenerationModelHandler(ModelHandler[generation.GenerationRequest, generation.GenerationResult, Any]):
    """RunInference handler: requests in, GenerationResults out (failures are values, never raises)."""

    def __init__(self, spec: EngineSpec, params: generation.SamplingParams, min_batch_size: int = 1,
                 max_batch_size: int = 64, share_across_processes: bool = False) -> None:
        super().__init__()
        self.spec, self.params, self.share = spec, params, share_across_processes
        self._batch = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self) -> generation.Engine:
        return self.spec.build()

    def run_inference(self, batch: Sequence[generation.GenerationRequest], model: generation.Engine,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        results = model.generate(list(batch), self.params)
        return [PredictionResult(req, res, model_id=model.model_id) for req, res in zip(batch, results)]

    def batch_elements_kwargs(self) -> dict[str, int]:
        return dict(self._batch)

    def share_model_across_processes(self) -> bool:
        # On multi-process runners set share_across_processes for the vLLM engine: one copy of the
        # weights per machine, served to the worker processes through Beam's multi_process_shared.
        return self.share

    def get_metrics_namespace(self) -> str:
        return "generation"
