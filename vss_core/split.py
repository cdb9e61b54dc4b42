"""Which samples are held out for evaluation: one rule, used by training (which never sees them) and
by the evaluate stage (which sees only them).

Deterministic by sample name: the names are ranked by sha256(name) and the lowest round(fraction * N)
are held out (at least one when fraction > 0 and there are two samples or more; never all). Adding a
sample moves at most one held-out name: the others keep their rank.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def held_out(names: Iterable[str], fraction: float) -> list[str]:
    """The held-out names, in the order given."""
    names = list(names)
    if fraction <= 0 or len(names) < 2:
        return []
    count = min(len(names) - 1, max(1, round(fraction * len(names))))
    ranked = sorted(names, key=lambda n: (hashlib.sha256(n.encode()).hexdigest(), n))
    chosen = set(ranked[:count])
    return [n for n in names if n in chosen]


def training_names(names: Iterable[str], fraction: float) -> list[str]:
    """The names training uses: all but the held-out ones, in the order given."""
    names = list(names)
    out = set(held_out(names, fraction))
    return [n for n in names if n not in out]
