"""Reproducible randomness for exploration.

The draw for a decision is a hash of the engine's seed and the decision id, not
a shared random generator: the same event always gets the same draw whatever
order or process handles it, so replay and the live stream agree, and a
restarted worker decides a re-read event exactly as before.
"""

from __future__ import annotations

import hashlib


def explore_draw(seed: int, decision_id: str, purpose: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, decision id, purpose)."""
    digest = hashlib.blake2b(
        f"{seed}\x1f{decision_id}\x1f{purpose}".encode(), digest_size=8
    ).digest()
    # 53 bits, a float's whole mantissa: dividing all 64 by 2**64 rounds the largest
    # values up to exactly 1.0, and a draw must stay below 1 (it indexes a list).
    return (int.from_bytes(digest, "big") >> 11) / 2**53
