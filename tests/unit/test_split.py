"""The held-out split: deterministic by name, a share of the samples, never all, stable as data grows."""

import hashlib

from vss_core import split


def test_the_lowest_sha256_ranks_are_held_out_in_the_given_order():
    names = [f"{i:02d}" for i in range(1, 21)]
    held = split.held_out(names, 0.25)
    ranked = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    assert set(held) == set(ranked[:5]) and held == [n for n in names if n in held]
    assert split.training_names(names, 0.25) == [n for n in names if n not in held]
    assert split.held_out(list(reversed(names)), 0.25) == [n for n in reversed(names) if n in held]


def test_edges_none_at_zero_one_at_least_never_all():
    assert split.held_out(["a", "b", "c"], 0.0) == []
    assert split.held_out(["a"], 0.5) == []
    assert len(split.held_out(["a", "b", "c"], 0.01)) == 1
    assert len(split.held_out(["a", "b"], 0.99)) == 1


def test_a_new_sample_moves_at_most_one_held_out_name():
    names = [f"s{i}" for i in range(40)]
    before = set(split.held_out(names, 0.1))
    after = set(split.held_out(names + ["new"], 0.1))
    assert len(before - after) <= 1
