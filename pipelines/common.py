"""Pieces every pipeline shares: options, the offline default runner, manifests and dead letters."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from curation import storage

# Beam 2.77's DirectRunner first tries to download the Prism runner, which cannot work offline;
# the portable FnApiRunner runs in-process with no download. Users pick another runner by flag
# (--runner=FlinkRunner / SparkRunner / DataflowRunner with that runner's own options).
DEFAULT_RUNNER = "FnApiRunner"

QUARANTINE_FIELDS = [("stage", pa.string()), ("reason", pa.string()), ("error", pa.string())]


class CurationOptions(PipelineOptions):
    """Options shared by all curation pipelines."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:  # noqa: ANN001 - Beam's hook
        parser.add_argument("--root", default="./data", help="storage root (local path or fsspec URL)")
        parser.add_argument("--partitions", default="", help="comma-separated drops to process (default: all in landing/)")


def pipeline_options(argv: Sequence[str] | None, **overrides) -> PipelineOptions:
    """PipelineOptions from argv, with the offline runner unless --runner is given."""
    opts = PipelineOptions(list(argv or []), **overrides)
    if not opts.view_as(StandardOptions).runner:
        opts.view_as(StandardOptions).runner = DEFAULT_RUNNER
    return opts


_USED_TEST_PIPELINES: "weakref.WeakSet[beam.Pipeline]" = weakref.WeakSet()


def run_pipeline(argv: Sequence[str] | None, build, test_pipeline=None):  # noqa: ANN001
    """Build a pipeline with ``build(p)`` and run it to completion (on ``test_pipeline`` in tests).

    A test pipeline already run by an earlier stage (a CLI run of several stages gets one) is not
    extended: the next stage runs on a fresh pipeline with the same runner and options."""
    if test_pipeline is not None:
        if test_pipeline in _USED_TEST_PIPELINES:
            test_pipeline = beam.Pipeline(runner=test_pipeline.runner, options=test_pipeline.options)
        _USED_TEST_PIPELINES.add(test_pipeline)
        build(test_pipeline)
        result = test_pipeline.run()
        result.wait_until_finish()
        return result
    p = beam.Pipeline(options=pipeline_options(argv))
    build(p)
    result = p.run()
    result.wait_until_finish()
    return result


def manifest_url(root: str, asset: str, partition: str) -> str:
    return storage.join(root, "manifests", asset, f"{partition}.parquet")


def quarantine_url(root: str, asset: str, partition: str) -> str:
    return storage.join(root, "quarantine", asset, f"{partition}.parquet")


def read_schema(url: str) -> pa.Schema:
    """The schema of a parquet manifest (footer only)."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_schema(f)


def extend_schema(schema: pa.Schema, fields: Sequence[tuple[str, pa.DataType]]) -> pa.Schema:
    """``schema`` plus ``fields`` (replacing same-named ones), metadata dropped."""
    names = {n for n, _ in fields}
    kept = [f for f in schema if f.name not in names]
    return pa.schema(kept + [pa.field(n, t) for n, t in fields])


def quarantine_schema(schema: pa.Schema) -> pa.Schema:
    return extend_schema(schema, QUARANTINE_FIELDS)


def project(record: dict, schema: pa.Schema) -> dict:
    """The record with exactly the schema's columns (missing ones None)."""
    return {f.name: record.get(f.name) for f in schema}


class WriteManifest(beam.PTransform):
    """Write records to one parquet file at ``url`` (Beam's sink writes a temp file, then renames)."""

    def __init__(self, url: str, schema: pa.Schema) -> None:
        super().__init__()
        self.url, self.schema = url, schema

    def expand(self, pcoll):
        schema = self.schema
        return (
            pcoll
            | "Project" >> beam.Map(project, schema)
            | "Write" >> beam.io.WriteToParquet(self.url, schema, num_shards=1, shard_name_template="")
        )


def dead_letter_to_quarantine(stage: str):
    """FlatMap a ``with_exception_handling`` dead letter (element, (type, value, tb)) to quarantine rows.

    A batch (list of records) that raised yields one row per record, so nothing is lost.
    """

    def convert(bad) -> Iterable[dict]:  # noqa: ANN001
        element, exc = bad
        exc_type, exc_value = exc[0], exc[1]
        name = getattr(exc_type, "__name__", str(exc_type))
        logging.warning("dead letter in %s: %s: %s", stage, name, exc_value)
        elements = element if isinstance(element, list) else [element]
        for el in elements:
            record = dict(el) if isinstance(el, dict) else {"payload": json.dumps(el, default=str)}
            record.update(stage=stage, reason=f"exception_{name}", error=f"{name}: {exc_value}"[:2000])
            yield record

    return convert


def read_manifests(p: beam.Pipeline, urls: Sequence[str], label: str = "ReadManifests",
                   columns: Sequence[str] | None = None) -> beam.PCollection:
    """Rows of several parquet manifests as one PCollection (one read transform, however many drops)."""
    return (p | f"{label}Urls" >> beam.Create(list(urls))
            | label >> beam.io.ReadAllFromParquet(columns=list(columns) if columns else None))


def _kept(kv: tuple[Any, dict]) -> Iterable[dict]:
    _key, g = kv
    if g["keep"]:
        yield from g["records"]


class KeepIds(beam.PTransform):
    """``{"records": dicts, "keep": ids} | KeepIds()``: the records whose ``id`` is among the ids (a
    CoGroupByKey semi-join: neither side becomes a side input), spread over workers again."""

    def expand(self, inputs):
        records = inputs["records"] | "KeyRecords" >> beam.Map(lambda r: (r["id"], r))
        keep = inputs["keep"] | "KeyIds" >> beam.Map(lambda i: (i, True))
        return ({"records": records, "keep": keep} | "Join" >> beam.CoGroupByKey() | "Kept" >> beam.FlatMap(_kept)
                | "Spread" >> beam.Reshuffle())


class Split(beam.PTransform):
    """A DoFn that yields kept records and ``reject(...)`` rows, as a ``(kept, quarantined)`` transform
    (exceptions become dead letters in quarantine too)."""

    def __init__(self, label: str, dofn: beam.DoFn, *args: Any) -> None:
        super().__init__()
        self.label, self.dofn, self.args = label, dofn, args

    def expand(self, pcoll):
        return split_dofn(pcoll, self.label, self.dofn, *self.args)


def split_dofn(pcoll, label: str, dofn: beam.DoFn, *args):  # noqa: ANN001
    """Apply a DoFn that yields kept records and ``TaggedOutput('quarantine', row)``; exceptions become
    dead letters in quarantine too. Returns (kept, quarantine)."""
    r = pcoll | label >> beam.ParDo(dofn, *args).with_outputs("quarantine", main="ok").with_exception_handling(
        dead_letter_tag="dead")
    dead = r["dead"] | f"{label}DeadLetters" >> beam.FlatMap(dead_letter_to_quarantine(label))
    quarantine = (r["quarantine"], dead) | f"{label}Quarantine" >> beam.Flatten()
    return r["ok"], quarantine


def quarantined(record: dict, stage: str, reason: str, error: str | None = None) -> dict:
    out = dict(record)
    out.update(stage=stage, reason=reason, error=error)
    return out


QUARANTINE = "quarantine"  # the tagged output every stage's rejections go to


def reject(record: dict, track: str, stage: str, reason: str, error: str | None = None) -> beam.pvalue.TaggedOutput:
    """A rejected record as the stage's quarantine output, counted as ``<stage>_drop_<reason>``.

    The one way a stage drops a record: the counter names are the same in every track, so the asset
    metadata, the CLI summary and the tests read drops the same way."""
    Metrics.counter(track, f"{stage}_drop_{reason}").inc()
    return beam.pvalue.TaggedOutput(QUARANTINE, quarantined(record, stage, reason, error))


def accept(record: dict, track: str, stage: str) -> dict:
    """A kept record, counted as ``<stage>_kept``."""
    Metrics.counter(track, f"{stage}_kept").inc()
    return record


def counters(result, namespace: str | None = None) -> dict[str, int]:  # noqa: ANN001 - a Beam PipelineResult
    """Committed counters of a finished pipeline by name (summed over steps); {} where the runner
    reports none."""
    flt = MetricsFilter() if namespace is None else MetricsFilter().with_namespace(namespace)
    try:
        found = result.metrics().query(flt)["counters"]
    except (AttributeError, NotImplementedError, KeyError):
        return {}
    out: dict[str, int] = {}
    for c in found:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------
# Stages: declared once, run over any number of drops in one Beam job


@dataclass(frozen=True)
class StageResult:
    """What one stage run wrote: per-drop manifest and quarantine URLs, Beam counters, and the plan
    it used (thresholds, search plans...): the assets show this instead of re-deriving it."""

    track: str
    stage: str
    asset: str
    partitions: tuple[str, ...]
    manifests: Mapping[str, str]
    quarantines: Mapping[str, str]
    counters: Mapping[str, int] = field(default_factory=dict)
    plan: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def corpus(cls, track: str, stage: str, asset: str, root: str, partitions: Sequence[str], result,  # noqa: ANN001
               plan: Mapping[str, Any] | None = None, name: str = "all") -> StageResult:
        """The result of a corpus-wide stage that read ``partitions`` and wrote one ``<name>`` manifest."""
        return cls(track, stage, asset, tuple(partitions), {name: manifest_url(root, asset, name)},
                   {name: quarantine_url(root, asset, name)}, counters(result, track), dict(plan or {}))

    def drops_by_reason(self) -> dict[str, int]:
        """``reason -> count`` from the ``<stage>_drop_<reason>`` counters."""
        prefix = f"{self.stage}_drop_"
        return {k[len(prefix):]: v for k, v in self.counters.items() if k.startswith(prefix)}


class ByPartition(beam.PTransform):
    """Split records into one PCollection per drop (one pass, ``beam.Partition`` on ``partition``)."""

    def __init__(self, partitions: Sequence[str]) -> None:
        super().__init__()
        self.partitions = list(partitions)

    def expand(self, pcoll):
        index = {p: i for i, p in enumerate(self.partitions)}
        n = len(self.partitions)

        def which(rec: dict, _n: int) -> int:
            try:
                return index[rec["partition"]]
            except KeyError:
                raise ValueError(f"record {rec.get('id')!r} belongs to drop {rec.get('partition')!r}, "
                                 f"not to one of {sorted(index)}") from None

        return pcoll | beam.Partition(which, n)


class WritePerDrop(beam.PTransform):
    """Records to ``manifests/<asset>/<drop>.parquet`` (or ``quarantine/...`` with ``quarantine=True``),
    one file per drop, in one pass; a drop without records gets an empty file (the stage ran for it)."""

    def __init__(self, root: str, asset: str, partitions: Sequence[str], schema: pa.Schema, quarantine: bool = False) -> None:
        super().__init__()
        self.root, self.asset, self.partitions, self.schema, self.quarantine = root, asset, list(partitions), schema, quarantine

    def expand(self, pcoll):
        url = quarantine_url if self.quarantine else manifest_url
        split = pcoll | "ByDrop" >> ByPartition(self.partitions)
        for i, part in enumerate(self.partitions):
            split[i] | f"Write[{i}]" >> WriteManifest(url(self.root, self.asset, part), self.schema)
        return beam.pvalue.PDone(pcoll.pipeline)


def write_per_partition(ok, bad, root: str, asset: str, partitions: Sequence[str], schema: pa.Schema,  # noqa: ANN001
                        quarantine_fields: Sequence[tuple[str, pa.DataType]] = (), qschema: pa.Schema | None = None) -> None:
    """Kept records to ``manifests/<asset>/<drop>.parquet`` and rejected ones to
    ``quarantine/<asset>/<drop>.parquet``, one file each per drop."""
    qschema = qschema or quarantine_schema(extend_schema(schema, quarantine_fields))
    ok | f"WriteManifests[{asset}]" >> WritePerDrop(root, asset, partitions, schema)
    bad | f"WriteQuarantine[{asset}]" >> WritePerDrop(root, asset, partitions, qschema, quarantine=True)


def as_partitions(partitions: str | Sequence[str]) -> tuple[str, ...]:
    """One drop name or several -> a tuple of drops, each once, in the given order."""
    parts = (partitions,) if isinstance(partitions, str) else tuple(partitions)
    if not parts:
        raise ValueError("no drops given")
    dupes = sorted({p for p in parts if parts.count(p) > 1})
    if dupes:
        raise ValueError(f"drops given twice: {dupes}")
    return parts


@dataclass(frozen=True)
class Stage:
    """One per-drop stage of a track, declared once.

    ``upstream``: the asset whose per-drop manifests it reads (``source`` overrides how records are
    read, e.g. from landing/); ``fields``: the columns it adds; ``transform(root, settings)``: a
    PTransform from records to ``(kept, quarantined)``. Records carry their drop in ``partition``.
    ``run`` applies the transform ONCE over all given drops in one Beam job (one model load per
    worker, whatever the number of drops) and writes one manifest and quarantine per drop. A transform
    may return a third item, ``{asset: (records, schema)}``: side manifests written per drop as well
    (e.g. the images a document parser extracts).
    """

    track: str
    name: str
    asset: str
    upstream: str | None
    fields: tuple[tuple[str, pa.DataType], ...]
    transform: Callable[[str, Any], beam.PTransform]
    source: Callable[..., Any] | None = None  # (pipeline, root, partitions, settings) -> records
    schema: Callable[[str, Sequence[str]], pa.Schema] | None = None  # (root, partitions) -> output schema
    quarantine_fields: tuple[tuple[str, pa.DataType], ...] = ()
    fixed_quarantine_schema: pa.Schema | None = None  # instead of the output schema + quarantine fields
    plan: Callable[[str, Sequence[str], Any], Mapping[str, Any]] | None = None  # read after the run -> StageResult.plan

    def upstream_urls(self, root: str, partitions: Sequence[str]) -> dict[str, str]:
        assert self.upstream is not None
        urls = {p: manifest_url(root, self.upstream, p) for p in partitions}
        missing = [u for u in urls.values() if not storage.exists(u)]
        if missing:
            raise FileNotFoundError(f"{self.name}: upstream manifests missing: {missing} "
                                    f"(materialize {self.upstream} for those drops first)")
        return urls

    def output_schema(self, root: str, partitions: Sequence[str]) -> pa.Schema:
        if self.schema is not None:
            return self.schema(root, partitions)
        first = next(iter(self.upstream_urls(root, partitions).values()))
        return extend_schema(read_schema(first), self.fields)

    def build(self, p, root: str, partitions: Sequence[str], settings: Any) -> None:  # noqa: ANN001
        """Add this stage's steps to pipeline ``p`` (used by ``run``; also to compose stages)."""
        schema = self.output_schema(root, partitions)
        if self.source is not None:
            records = self.source(p, root, partitions, settings)
        else:
            records = read_manifests(p, list(self.upstream_urls(root, partitions).values()), "Read")
        ok, bad, *rest = records | self.name.capitalize() >> self.transform(root, settings)
        write_per_partition(ok, bad, root, self.asset, partitions, schema, self.quarantine_fields, self.fixed_quarantine_schema)
        for asset, (pcoll, side_schema) in sorted((rest[0] if rest else {}).items()):
            pcoll | f"WriteManifests[{asset}]" >> WritePerDrop(root, asset, partitions, side_schema)

    def runner(self, doc: str) -> Callable[..., StageResult]:
        """The track's public ``run_<stage>(root, drops, settings, argv=(), test_pipeline=None)``."""

        def run_stage(root: str, partitions: str | Sequence[str], settings: Any, argv: Sequence[str] = (),
                      test_pipeline=None) -> StageResult:  # noqa: ANN001
            return self.run(root, partitions, settings, argv, test_pipeline)

        run_stage.__name__ = run_stage.__qualname__ = f"run_{self.name}"
        run_stage.__doc__ = doc
        return run_stage

    def run(self, root: str, partitions: str | Sequence[str], settings: Any, argv: Sequence[str] = (),
            test_pipeline=None) -> StageResult:  # noqa: ANN001
        parts = as_partitions(partitions)
        result = run_pipeline(argv, lambda p: self.build(p, root, parts, settings), test_pipeline)
        plan = dict(self.plan(root, parts, settings)) if self.plan is not None else {}
        return StageResult(self.track, self.name, self.asset, parts,
                           {q: manifest_url(root, self.asset, q) for q in parts},
                           {q: quarantine_url(root, self.asset, q) for q in parts},
                           counters(result, self.track), plan)


def format_exception(e: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(e), e)).strip()[:2000]


def track_cli(prog: str, doc: str | None, track: str, stages: Sequence[str]) -> argparse.ArgumentParser:
    """The options every track's command line shares: --root, --stages, --partitions."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="./data")
    parser.add_argument("--stages", default="all", help=f"comma-separated, or 'all': {','.join(stages)}")
    parser.add_argument("--partitions", default="", help=f"drops under landing/{track}/ (default: all)")
    return parser


def cli_plan(parser: argparse.ArgumentParser, args: argparse.Namespace, stages: Sequence[str], track: str,
             list_partitions: Callable[[str], list[str]]) -> tuple[tuple[str, ...], list[str]]:
    """(stages to run, in pipeline order; drops) from the shared options; a usage error for unknown stages
    or a landing folder without drops. Also turns on INFO logging (Beam's progress)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asked = stages if args.stages == "all" else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = set(asked) - set(stages)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {','.join(stages)}")
    partitions = [p for p in args.partitions.split(",") if p] or list_partitions(args.root)
    if not partitions:
        parser.error(f"no drops under {storage.join(args.root, 'landing', track)}")
    return tuple(s for s in stages if s in asked), partitions


def manifest_digest(url: str, ignore: Sequence[str] = ()) -> bytes:
    """sha256 of a manifest's content, independent of row order (``curation.storage.table_digest``)."""
    return bytes.fromhex(storage.table_digest(url, ignore))


def content_version(urls: Sequence[str], *salt: object, ignore: Sequence[str] = ()) -> str:
    """A shard set's version: 'v-' + sha256 over ``salt`` (dataset name, settings that shape the
    samples) and the content digest of each input manifest [:12]. Same inputs, same version: a re-run
    rewrites the same folder; new inputs or settings, a new one."""
    h = hashlib.sha256(repr(salt).encode())
    for u in urls:
        h.update(manifest_digest(u, ignore))
    return "v-" + h.hexdigest()[:12]


def landing_drops(root: str, track: str) -> list[str]:
    """Drop folders under ``landing/<track>/`` (sorted; hidden folders, e.g. an upload in progress, left out)."""
    fs, path = storage.filesystem(storage.join(root, "landing", track))
    if not fs.exists(path):
        return []
    names = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p))
    return sorted(n for n in names if not n.startswith("."))
