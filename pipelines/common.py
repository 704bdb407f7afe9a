"""Pieces every pipeline shares: options, the offline default runner, manifests and dead letters."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import traceback
from collections.abc import Callable, Iterable, Sequence

import apache_beam as beam
import pyarrow as pa
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


def run_pipeline(argv: Sequence[str] | None, build, test_pipeline=None):  # noqa: ANN001
    """Build a pipeline with ``build(p)`` and run it to completion (on ``test_pipeline`` in tests)."""
    if test_pipeline is not None:
        build(test_pipeline)
        return test_pipeline.run()
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
    """sha256 of a manifest's content: its rows sorted by every string and integer column, as an Arrow
    IPC stream, without the ``ignore`` columns (values that differ between runs of the same content,
    e.g. a response-cache hit flag). Not of the parquet bytes: a distributed runner writes rows in
    whatever order its workers finish, and a re-run with the same rows must give the same version."""
    table = storage.read_table(url)
    table = table.drop_columns([c for c in ignore if c in table.column_names])
    keys = [(f.name, "ascending") for f in table.schema if pa.types.is_string(f.type) or pa.types.is_integer(f.type)]
    table = table.sort_by(keys) if keys and table.num_rows else table
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).digest()


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
