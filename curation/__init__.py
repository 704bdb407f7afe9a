"""Pure curation operators: typed functions and small classes over records.

No Dagster and no Beam in here: every module is usable on its own
(``from curation.phash import phash_bytes``) from a notebook or another framework.
"""
