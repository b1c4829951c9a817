"""Soak: random faults over a small run, again and again, for as long as asked; prints the tally.

    python bench/soak.py --minutes 10          # tiny random Llama, the demo data, CPU
    python bench/soak.py --minutes 60 --seed 7

Each round starts a fresh small run (tests/faultlib.py: upstream MTL, then 8 cells in groups of 4,
checkpointed every 3 steps), starts its worker with one random fault (engine.base.faults: SIGKILL or
SIGTERM at a named point, ENOSPC or EIO on a write), checks the run tells the truth and nothing is
half-written, resumes it until it finishes (a resume may meet a second fault, drawn the same way,
with probability --second), and compares its records with an undisturbed reference run. Not in CI.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import build_tiny_model  # noqa: E402
from engine.runner.lifecycle import execute  # noqa: E402
from faultlib import check_after_fault, fault_run, random_faults, records, run_worker  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--second", type=float, default=0.3, help="chance that a resume meets a fault too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mpt-soak-"))
    model = build_tiny_model("llama", work / "tiny")
    reference = fault_run(work / "reference", model)
    execute(reference)
    expected = records(reference)
    rng = random.Random(args.seed)
    tally: Counter = Counter()
    by_action: Counter = Counter()
    mismatches, untruthful = [], []
    deadline = time.time() + 60 * args.minutes
    round_no = 0
    while time.time() < deadline:
        round_no += 1
        run = fault_run(work / f"round{round_no}", model, name=f"soak{round_no}")
        fault = random_faults(rng.randrange(2**31), 1)[0]
        for attempt in range(5):
            run_worker(run, fault)
            tally["faults planned"] += 1
            by_action[fault.split("@")[0]] += 1
            try:
                state = check_after_fault(run, fault)
            except AssertionError as exc:
                untruthful.append((run.path, fault, str(exc)[:200]))
                state = run.status()["state"]
            if state == "finished":
                break
            fault = random_faults(rng.randrange(2**31), 1)[0] if rng.random() < args.second else None
            if fault is None:
                run_worker(run, None)
                break
        if run.status()["state"] != "finished":
            run_worker(run, None)
        tally["runs"] += 1
        tally["runs finished"] += run.status()["state"] == "finished"
        got = records(run)
        tally["records compared"] += len(got)
        if got != expected:
            mismatches.append((run.path, fault))
        print(f"round {round_no}: {run.status()['state']}, {len(got)} records, "
              f"{'same' if got == expected else 'DIFFERENT'}", flush=True)
    print()
    print(f"{'faults planned':<20} {tally['faults planned']:>6}  ({', '.join(f'{k} {v}' for k, v in sorted(by_action.items()))})")
    for key in ("runs", "runs finished", "records compared"):
        print(f"{key:<20} {tally[key]:>6}")
    print(f"{'mismatches':<20} {len(mismatches):>6}")
    for path, fault in mismatches:
        print(f"  {path} ({fault})")
    print(f"{'untruthful states':<20} {len(untruthful):>6}")
    for path, fault, why in untruthful:
        print(f"  {path} ({fault}): {why}")
    return 1 if mismatches or untruthful else 0


if __name__ == "__main__":
    sys.exit(main())
