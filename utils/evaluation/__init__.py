"""The evaluation wing: geometries (``protocol``), map normalisation and box rules (``boxes``),
metrics (``metrics``), the evaluator of saved score maps (``evaluate``, ``python -m
utils.evaluation``), the per-image files handed between stages (``handoff``) and pictures
(``visualize``). Imports the base and the data wing."""
