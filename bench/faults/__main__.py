"""The fault harness (issue 12): SIGKILLs, broker restarts and a 1 → 2 → 1 rebalance under a
backlog, checked against ``carwatch replay`` (``bench/faults/harness.py`` says how).

    python -m bench.faults                      # the full run: >= 100,000 results, 20 kills,
                                                # 5 broker restarts, 1 -> 2 -> 1, RocksDB store
    python -m bench.faults --store memory://    # the same on the in-memory store
    python -m bench.faults --patients 300 --kills 3 --broker-restarts 1   # a short look

Exit status 0 when nothing was lost, invented or doubled and every SIGKILL restart showed
committed progress within the budget (--restart-budget, 5 s); 1 otherwise.
"""

import argparse
import statistics
import sys
from pathlib import Path

from bench.faults.harness import FaultPlan, FaultRun
from bench.processes import ChildDied


def main() -> int:
    defaults = FaultPlan()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=39192, help="broker port (controller +1)")
    parser.add_argument("--patients", type=int, default=defaults.patients)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="lab results/s")
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--broker-restarts", type=int, default=defaults.broker_restarts)
    parser.add_argument("--no-rebalance", action="store_true")
    parser.add_argument("--store", default=defaults.store, choices=("rocksdb://", "memory://"))
    parser.add_argument("--policy", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--restart-budget", type=float, default=defaults.restart_budget_s)
    args = parser.parse_args()
    plan = FaultPlan(
        patients=args.patients,
        rate=args.rate,
        kills=args.kills,
        broker_restarts=args.broker_restarts,
        rebalance=not args.no_rebalance,
        store=args.store,
        policy=args.policy,
        seed=args.seed,
        restart_budget_s=args.restart_budget,
    )
    run = FaultRun(plan, args.port)
    print(f"fault run, store {plan.store}, logs in {run.tmp}", flush=True)
    try:
        report = run.run()
    except (ChildDied, TimeoutError) as exc:
        print(f"faults: {exc}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    kills = report.kill_restarts()
    slow = [t for t in kills if t > plan.restart_budget_s]
    missing = plan.kills - len(kills)
    if kills:
        print(
            f"SIGKILL restart to committed progress: median {statistics.median(kills):.1f} s, "
            f"max {max(kills):.1f} s, over {plan.restart_budget_s:.0f} s: {len(slow)}"
        )
    ok = report.ok and not slow and not missing
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
