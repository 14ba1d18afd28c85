"""Timing search configurations against each other, and the rule that chooses among them.

Calibration and the index-kind comparison time every candidate configuration on the same
queries in :func:`interleaved_rounds`: many short rounds, each running every candidate on a
slice of the queries in a rotated order. The choice (:func:`pick`) then reads *paired* ratios:
in each round, one candidate's median query time over the other's, and the median of those
ratios over the rounds. A burst of machine load that falls on one round moves that round's
ratio, not the median of twelve; and load that lasts a whole round slows every candidate in
it alike, which the ratio cancels. Comparing medians over all queries (as before) let one
loaded round of three flip the choice. The rule is a pure function of the recorded per-round
medians, so it is tested on recorded timings, not on wall time.

A candidate replaces a preferred one only when it is faster by the band: its paired ratio
against it is below :data:`TIE_BAND` (0.9, at least 10% faster in the median round, which means
faster in most rounds). Within the band the preferred candidate is kept: exact search (recall 1)
before an approximate one, the configuration that costs nothing more to keep (the index kind
already in place) before one that needs a rebuild.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_perf = time.perf_counter

TIMING_ROUNDS = 12
"""Interleaved rounds in which candidate configurations are timed (each round runs every
candidate on its own slice of the calibration queries: 400 queries make rounds of ~33)."""
TIE_BAND = 0.9
"""A candidate displaces a preferred one only when its paired ratio against it is below this."""


def interleaved_rounds(
    paths: Mapping[str, Callable[[np.ndarray], Any]],
    queries: np.ndarray,
    rounds: int = TIMING_ROUNDS,
) -> dict[str, list[np.ndarray]]:
    """Each path's query times (ms), per round: in each of ``rounds`` rounds (fewer when there
    are fewer queries) every path runs the same slice of the queries, the paths in a rotated
    order, so that load that comes and goes falls on all of them alike."""
    names = list(paths)
    for name in names:  # one untimed call each: caches, files, code paths warm
        paths[name](queries[0])
    times: dict[str, list[np.ndarray]] = {n: [] for n in names}
    slices = np.array_split(np.arange(len(queries)), max(1, min(rounds, len(queries))))
    for r, part in enumerate(slices):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            run = paths[name]
            took = np.empty(len(part))
            for j, i in enumerate(part):
                began = _perf()
                run(queries[i])
                took[j] = (_perf() - began) * 1000
            times[name].append(took)
    return times


def round_medians(times: Mapping[str, Sequence[np.ndarray]]) -> dict[str, list[float]]:
    """Each path's median query time (ms) in each round."""
    return {name: [float(np.median(t)) for t in rounds] for name, rounds in times.items()}


def overall_p50(times: Mapping[str, Sequence[np.ndarray]]) -> dict[str, float]:
    """Each path's median query time (ms) over all its rounds (what a plan reports as p50)."""
    return {name: float(np.median(np.concatenate(list(rounds)))) for name, rounds in times.items()}


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """The median over rounds of ``a``'s time over ``b``'s time in the same round."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired rounds differ in number: {len(a)} and {len(b)}")
    return float(np.median(np.asarray(a, dtype=float) / np.maximum(np.asarray(b, float), 1e-9)))


@dataclass(frozen=True)
class Pick:
    """What :func:`pick` chose: ``chosen``; ``fastest``, the candidate of the lowest paired
    ratio against the others; ``vs_fastest``, each candidate's paired ratio against it."""

    chosen: str
    fastest: str
    vs_fastest: dict[str, float]


def pick(
    round_p50: Mapping[str, Sequence[float]],
    preference: Sequence[str],
    band: float = TIE_BAND,
) -> Pick:
    """The candidate to keep, from per-round medians timed in the same rounds.

    The fastest is the candidate whose median per-round ratio against the round's best time is
    lowest (ties: earlier in ``preference``). The first candidate of ``preference`` that the
    fastest does not beat by the band (paired ratio fastest / it >= ``band``) is kept; the
    fastest itself qualifies, so one always is. Candidates not in ``preference`` are ignored.
    """
    names = [n for n in preference if n in round_p50]
    if not names:
        raise ValueError("no candidate to pick from")
    best_in_round = np.min([np.asarray(round_p50[n], dtype=float) for n in names], axis=0)
    relative = {n: paired_ratio(round_p50[n], best_in_round) for n in names}
    fastest = min(names, key=lambda n: (relative[n], names.index(n)))
    vs_fastest = {n: paired_ratio(round_p50[n], round_p50[fastest]) for n in names}
    chosen = next(
        n for n in names if paired_ratio(round_p50[fastest], round_p50[n]) >= band or n == fastest
    )
    return Pick(chosen=chosen, fastest=fastest, vs_fastest=vs_fastest)
