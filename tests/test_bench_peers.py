"""The peer bench's own arithmetic and arguments (the bench itself needs Pipecat's virtualenv and
real time, so it is not run here)."""

from __future__ import annotations

import math

import pytest

from bench import pipeline_overhead as po
from bench.peers import compare

LOAD = po.FakeLoad(cpu_share=0.1, loop_lag_p99=0.001)


def figures(overhead_ms: list[float], cpu_share: float, *, missed: int = 0) -> po.Figures:
    return po.Figures(
        overhead=[x / 1000 for x in overhead_ms],
        stt_leg=[],
        reply_leg=[],
        baseline=[],
        barge_in_stop=[0.01],
        unplayed_at_barge_in=[],
        barge_ins_missed=missed,
        loop_lag=[],
        cpu_share=cpu_share,
        sarvam_load=LOAD,
        chat_load=LOAD,
    )


def test_defaults_are_the_levels_the_comparison_reports() -> None:
    args = compare.parse_args([])
    assert args.sessions == (1, 10, 20)
    assert args.variants == ("stock", "adjusted")


@pytest.mark.parametrize("argv", [["--sessions", "0"], ["--turns", "0"], ["--variants", "tuned"]])
def test_nonsense_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        compare.parse_args(argv)


def test_sides_alternate_at_each_level_and_the_order_reverses_every_round() -> None:
    args = compare.parse_args(["--sessions", "1,10", "--rounds", "2", "--variants", "adjusted"])
    assert compare.schedule(args) == [
        (0, 1, "ours"),
        (0, 1, "pipecat-adjusted"),
        (0, 10, "ours"),
        (0, 10, "pipecat-adjusted"),
        (1, 1, "pipecat-adjusted"),
        (1, 1, "ours"),
        (1, 10, "pipecat-adjusted"),
        (1, 10, "ours"),
    ]


def test_rounds_are_pooled_and_cpu_is_per_session() -> None:
    summary = compare.summarise(
        "ours", 10, [figures([10, 20, 30], cpu_share=0.2), figures([40, 50], cpu_share=0.4, missed=1)]
    )
    assert summary.turns == 5
    assert summary.overhead_p50 == pytest.approx(0.030)
    assert summary.overhead_p95 == pytest.approx(0.050)
    assert summary.cpu_per_session == pytest.approx(0.03)  # mean share 0.3 over 10 sessions
    assert summary.missed == 1


def test_the_row_prints_pipecat_over_ours() -> None:
    ours = compare.summarise("ours", 1, [figures([10, 10], cpu_share=0.05)])
    peer = compare.summarise("pipecat-stock", 1, [figures([500, 500], cpu_share=0.1)])
    row = compare.table_row(peer, ours)
    assert "50.0x" in row  # overhead p50 and p95
    assert "2.0x" in row  # CPU per session
    assert "x" not in compare.table_row(ours, ours).split("ours", 1)[1]


def test_an_overhead_within_the_clocks_noise_has_no_ratio() -> None:
    assert math.isnan(compare.ratio(0.03, -0.001))
    assert compare.ratio(0.03, 0.01) == pytest.approx(3.0)


def test_pipecat_timings_become_the_same_figures_as_ours() -> None:
    spoke_until = 100.0
    transcript = spoke_until + po.STT_INJECTED_S + 0.004
    first_audio = transcript + po.REPLY_INJECTED_S + 0.020
    raw = {
        "turns": [[spoke_until, transcript, first_audio]],
        "barge_in_stop": [0.002],
        "barge_ins_missed": 0,
        "loop_lag": [0.001],
        "cpu_share": 0.08,
    }
    f = compare.pipecat_figures(raw, LOAD, LOAD)
    assert f.overhead == [pytest.approx(0.024)]
    assert f.stt_leg == [pytest.approx(0.004)]
    assert f.reply_leg == [pytest.approx(0.020)]
    assert f.cpu_share == 0.08
