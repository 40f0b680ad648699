"""The demo's code (``demo.py`` is its entry point): one job per file.

* ``settings``: the demo's own options and settings (``DEFAULTS`` < config ``demo:`` < command line).
* ``prepare``: the dataset (generated or given) and the stand-in pretraining (made once, reused).
* ``plan``: the stage plan (every stage script with its arguments) and running a stage in-process.
* ``readout``: the plain CAM network's classes, read from its own logits.
* ``scoring``: table rows through the shared evaluator, thresholds chosen on the training split, baselines.
* ``run``: the whole demo in order (what ``python3 demo.py`` runs).
* ``report``: ``results.json``, ``report.md`` and its pictures (``python -m demo_birds.report``).

May import ``utils``, ``network``, ``spol`` and ``sltnet``; nothing imports it but ``demo.py`` and
the tests (tests/unit/test_imports.py).
"""
