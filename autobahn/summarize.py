#!/usr/bin/env python3
"""Summarize a kosoku (Autobahn-format) report directory.

Usage: summarize.py SIDE REPORT_DIR [EXPECTED_TOTAL]

Reads REPORT_DIR/index.json, counts a case as passed when its behavior is OK, NON-STRICT or
INFORMATIONAL and its behaviorClose is OK or INFORMATIONAL (kosoku's own `passed` rule),
prints the failing case ids with behavior, close behavior and the remote close code, then
one line `SIDE: N passed, N failed`. Exit status 1 if any case failed, or if fewer cases
were reported than EXPECTED_TOTAL (missing cases count as failed).
"""

import json
import os
import sys

OK_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
OK_CLOSE = {"OK", "INFORMATIONAL"}


def key(case_id):
    return [int(p) for p in case_id.split(".")]


def main():
    side, outdir = sys.argv[1], sys.argv[2]
    expected = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else None
    path = os.path.join(outdir, "index.json")
    if not os.path.exists(path):
        print(f"{side}: no report ({path} missing)")
        print(f"{side}: 0 passed, {expected or 1} failed")
        return 1
    with open(path) as f:
        index = json.load(f)
    cases = {}
    for agent, by_case in index.items():
        for case_id, entry in by_case.items():
            cases[case_id] = (agent, entry)
    passed, failed = [], []
    for case_id in sorted(cases, key=key):
        agent, e = cases[case_id]
        ok = e["behavior"] in OK_BEHAVIOR and e["behaviorClose"] in OK_CLOSE
        (passed if ok else failed).append(case_id)
    missing = 0
    if expected is not None and len(cases) < expected:
        missing = expected - len(cases)
    if failed:
        print(f"{side}: failing cases (id: behavior / close behavior / remote close code):")
        for case_id in failed:
            agent, e = cases[case_id]
            print(
                f"  {case_id}: {e['behavior']} / {e['behaviorClose']} / "
                f"{e.get('remoteCloseCode')}  ({os.path.join(outdir, e['reportfile'])})"
            )
    if missing:
        print(f"{side}: {missing} case(s) missing from the report")
    agents = sorted({a for a, _ in cases.values()})
    print(f"{side}: agent {', '.join(agents)}; {len(cases)} cases reported")
    print(f"{side}: {len(passed)} passed, {len(failed) + missing} failed")
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
