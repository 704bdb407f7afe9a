"""Record conventions shared by every stage: stable ids, drop reasons, seeded draws.

A record is a plain ``dict`` (one manifest row). Every stage keeps the columns it received and adds
its own. A rejected record keeps its columns and gains ``stage`` and ``reason`` (and ``error`` for
exceptions); it goes to ``quarantine/<asset>/<partition>.parquet`` instead of disappearing.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass


def content_id(data: bytes, source_key: str = "") -> str:
    """Stable record id: sha256 of the content bytes and the source key (hex, 32 chars).

    The source key keeps two captions of the same image apart; the content hash keeps the id
    independent of where the file happens to live.
    """
    h = hashlib.sha256()
    h.update(data)
    h.update(b"\x00")
    h.update(source_key.encode("utf-8"))
    return h.hexdigest()[:32]


def sha256_hex(data: bytes) -> str:
    """Full sha256 of bytes (exact-duplicate key)."""
    return hashlib.sha256(data).hexdigest()


def seeded_uniform(record_id: str, salt: str = "") -> float:
    """A uniform draw in [0, 1) that depends only on (record_id, salt).

    Balancing and sampling use this instead of a global RNG so that a re-run, a different
    partitioning or a different worker count all give the same decisions.
    """
    digest = hashlib.blake2b(f"{salt}\x00{record_id}".encode(), digest_size=8).digest()
    return struct.unpack(">Q", digest)[0] / 2**64


def seeded_rng(record_id: str, salt: str = "") -> random.Random:
    """A ``random.Random`` seeded from (record_id, salt)."""
    digest = hashlib.blake2b(f"{salt}\x00{record_id}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass(frozen=True)
class Verdict:
    """Outcome of a filter, datatrove style: keep, or drop with a snake_case reason."""

    keep: bool
    reason: str | None = None

    def __iter__(self):  # allows ``keep, reason = verdict``
        yield self.keep
        yield self.reason


KEEP = Verdict(True, None)


def drop(reason: str) -> Verdict:
    """A drop verdict with its reason."""
    return Verdict(False, reason)
