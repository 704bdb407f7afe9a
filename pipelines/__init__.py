"""Apache Beam pipelines, one per track. They wrap curation operators with distribution only:
fan-out, grouping, combining, dead letters and metrics. No Dagster in here."""
