"""The rule that chooses among timed search configurations (stores/_vector_timing.py), on
recorded per-round medians: one loaded round cannot flip it, load on a whole round cancels, and
within the band the preferred configuration stays."""

from __future__ import annotations

import pytest

from contextkit.stores._vector_timing import TIE_BAND, paired_ratio, pick
from contextkit.stores.vector import LanceVectorStore

REACHED = {
    "exact": {"recall": 1.0, "reached": True},
    "projected": {"recall": 0.996, "reached": True},
    "ann": {"recall": 0.995, "reached": True},
}


def test_one_loaded_round_does_not_flip_the_choice():
    # SQ is 20% faster than FLAT in 11 of 12 rounds; in one round a burst of load hit SQ only
    flat = [6.0] * 12
    sq = [4.8] * 11 + [30.0]
    assert pick({"flat": flat, "sq": sq}, ["flat", "sq"]).chosen == "sq"
    # the other way round: FLAT faster only in the loaded round stays the loser
    flat_burst = [6.0] * 11 + [0.5]
    assert pick({"flat": flat_burst, "sq": sq[:11] + [4.8]}, ["flat", "sq"]).chosen == "sq"


def test_load_on_a_whole_round_cancels_in_the_paired_ratio():
    # both slowed 5x in the same two rounds: the ratio per round is what counts
    exact = [2.0, 2.0, 10.0, 2.0, 10.0, 2.0]
    projected = [1.4, 1.4, 7.0, 1.4, 7.0, 1.4]
    assert paired_ratio(projected, exact) == pytest.approx(0.7)
    assert pick({"exact": exact, "projected": projected}, ["exact", "projected"]).chosen == (
        "projected"
    )


def test_within_the_band_the_preferred_configuration_is_kept():
    preferred = [5.0] * 12
    # 5% faster in every round: a tie, the preferred one (say, the kind in place) stays
    assert pick({"in_place": preferred, "other": [4.75] * 12}, ["in_place", "other"]).chosen == (
        "in_place"
    )
    # 15% faster in the median round (and in most rounds): it wins
    other = [4.25] * 8 + [6.0] * 4
    choice = pick({"in_place": preferred, "other": other}, ["in_place", "other"])
    assert choice.chosen == "other" and choice.fastest == "other"
    assert choice.vs_fastest["in_place"] == pytest.approx(5.0 / 4.25)
    # faster in only 5 of 12 rounds: the median round is not, so no change
    other = [3.0] * 5 + [5.5] * 7
    assert pick({"in_place": preferred, "other": other}, ["in_place", "other"]).chosen == (
        "in_place"
    )


def test_the_band_applies_to_the_fastest_among_several():
    # ann fastest; projected within the band of it and preferred to it; exact is not
    rounds = {"exact": [3.0] * 6, "projected": [2.0] * 6, "ann": [1.9] * 6}
    choice = pick(rounds, ["exact", "projected", "ann"])
    assert choice.fastest == "ann" and choice.chosen == "projected"
    assert paired_ratio(rounds["ann"], rounds["projected"]) >= TIE_BAND


def test_the_plan_choice_reads_paired_rounds():
    choose = LanceVectorStore._choose
    # overall, ANN's queries were slower (a loaded round), but it beat exact in 11 of 12
    rounds = {"exact": [4.0] * 12, "ann": [3.0] * 11 + [40.0]}
    p50 = {"exact": 4.0, "ann": 3.0}
    method, reason = choose(REACHED, p50, "IvfHnswSq", 0.995, True, rounds=rounds)
    assert method == "ann" and "0.75x exact in the median of 12 paired rounds" in reason
    # within 10% of exact in the median round: exact search (recall 1) stays
    rounds = {"exact": [4.0] * 12, "projected": [3.7] * 12}
    method, reason = choose(REACHED, {"exact": 4.0, "projected": 3.7}, None, 0.995, True,
                            rounds=rounds)  # fmt: skip
    assert method == "exact" and "not under 0.9x" in reason
    # methods narrowed to the approximate ones: the best of them, exact timed as reference
    rounds = {"exact": [1.0] * 3, "projected": [2.0] * 3, "ann": [3.0] * 3}
    p50 = {"exact": 1.0, "projected": 2.0, "ann": 3.0}
    assert choose(REACHED, p50, "IvfHnswSq", 0.995, True, ("ann", "projected"), rounds)[0] == (
        "projected"
    )


def test_rounds_must_pair_up():
    with pytest.raises(ValueError, match="paired rounds differ"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no candidate"):
        pick({"a": [1.0]}, ["b"])
