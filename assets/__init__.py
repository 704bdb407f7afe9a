"""Dagster orchestration: the asset graph, partitions, sensors, resources and checks.

Assets only add orchestration (partitions, lineage, metadata, checks, resources); the work runs in
pipelines/ (Beam), the algorithms live in curation/.
"""
