"""Moved: the demo's report is ``demo_birds/report.py`` (``python -m demo_birds.report``). This stub
only tells a user of the old command where it went: ``utils`` may not import the demo's package
(tests/test_imports.py), so it does not forward the call."""
import sys

if __name__ == "__main__":
    print("error: `python -m utils.report` moved: run `python -m demo_birds.report "
          + " ".join(sys.argv[1:] or ["RESULTS.json"]) + "`", file=sys.stderr)
    raise SystemExit(2)
