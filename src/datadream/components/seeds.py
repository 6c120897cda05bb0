"""Seeds derived from names, so that each unit of work has its own reproducible random stream that
does not depend on which other units ran before it, or in which order."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, e.g. derive_seed(run_seed, "image", class_name, index)."""
    key = "\x1f".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & (2**63 - 1)
