"""The evaluation wing: protocols, box rules, metrics, the evaluator fed one map at a time
(``evaluator``), the evaluator of saved maps (``evaluate``, ``python -m utils.evaluation``), the
results writer (``results``), the per-image files handed between stages (``handoff``) and pictures
(``visualize``). Imports the base and the data wing. Specification: [docs/evaluation.md](../../docs/evaluation.md)."""
