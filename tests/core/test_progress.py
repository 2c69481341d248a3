"""Progress lines: the ETA comes from the rate of the work itself, not of what came before it."""

import io

import pytest

from unlearnable import progress as P


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(P.time, "perf_counter", lambda: now[0])
    return now


def _lines(stream):
    return stream.getvalue().splitlines()


def test_eta_ignores_set_up_before_the_items_start(clock):
    out = io.StringIO()
    tick = P.LineProgress(out, every=0.0).task("protect")
    clock[0] += 60.0  # a minute of set-up (say, a surrogate fit) before any item is done
    tick(0, 100)  # the items start now
    clock[0] += 10.0  # then 10 items per 10 s: 90 left take 90 s, 80 left 80 s
    tick(10, 100)
    clock[0] += 10.0
    tick(20, 100)
    first, second = _lines(out)
    assert "elapsed 1:10" in first and first.endswith("ETA 1:30"), first  # not 9 min
    assert second.endswith("ETA 1:20"), second


def test_first_tick_with_progress_extrapolates_from_the_start(clock):
    out = io.StringIO()
    tick = P.LineProgress(out, every=0.0).task("train")
    clock[0] += 30.0
    tick(1, 10)  # one epoch in 30 s: nine more take 4:30
    clock[0] += 20.0
    tick(2, 10)  # the next took 20 s: eight more, 2:40
    assert [ln.rsplit("ETA ", 1)[1] for ln in _lines(out)] == ["4:30", "2:40"]


def test_resumed_task_measures_only_the_new_work(clock):
    out = io.StringIO()
    tick = P.LineProgress(out, every=0.0).task("write")
    clock[0] += 1.0
    tick(900, 1000)  # resumed: 900 were done by an earlier run
    clock[0] += 5.0
    tick(950, 1000)
    clock[0] += 5.0
    tick(1000, 1000)
    assert [ln.rsplit("ETA ", 1)[1] for ln in _lines(out)][1:] == ["0:05", "0:00"]


def test_lines_are_sparse_but_the_last_is_always_printed(clock):
    out = io.StringIO()
    tick = P.LineProgress(out, every=5.0).task("load")
    tick(0, 10)  # nothing done: no line
    for i in range(1, 11):
        clock[0] += 1.0
        tick(i, 10)
    lines = _lines(out)
    assert lines[0].startswith("load: 1/10 (10%)") and lines[-1].startswith("load: 10/10 (100%)")
    assert len(lines) == 3  # 1, 6 (5 s later), and the end


def test_progress_ui_disabled_and_captured():
    with P.progress_ui(enabled=False) as ui:
        assert ui is None
    out = io.StringIO()
    with P.progress_ui(stream=out) as ui:
        ui("x")(3, 3)
    assert _lines(out) == ["x: 3/3 (100%) elapsed 0:00 ETA 0:00"]
