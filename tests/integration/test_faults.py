"""The short fault run (issue 12): 3 SIGKILLs, 1 broker restart and a 1 → 2 → 1 rebalance while
a few thousand results drain, on the RocksDB store; nothing lost, invented or doubled against
``carwatch replay`` (``bench/faults/harness.py``; ``python -m bench.faults`` is the full run)."""

import pytest

from bench.faults.harness import FaultPlan, FaultRun
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def test_a_short_fault_run_loses_invents_and_doubles_nothing(broker: object) -> None:
    # ``broker`` only makes sure Java and the jars are there; this run restarts its own broker.
    plan = FaultPlan(patients=240, rate=300, kills=3, broker_restarts=1, store="rocksdb://")
    run = FaultRun(plan, port=free_port(), controller_port=free_port())
    report = run.run()
    summary = "\n".join(report.lines())
    assert report.results >= 3000, summary
    assert set(report.rules) >= {
        "bca_loss",
        "hct_consolidation",
        "hypogammaglobulinemia",
        "iec_hs",
        "mrd_positive",
        "prolonged_neutropenia",
    }, summary
    assert report.expected > 200 and report.tick_expected > 0, summary
    assert (report.lost, report.spurious, report.duplicates) == ([], [], []), summary
    assert report.out_of_order == [] and report.tick_lost == report.tick_spurious == [], summary
    assert [r.what for r in report.restarts].count("kill") == 3, summary
    kills = report.kill_restarts()
    # every restart showed committed progress; the 5 s budget is the harness's, with margin here
    assert len(kills) == 3 and max(kills) < 15, summary
