"""SPOL (Wei et al., CVPR 2021): shallow feature-aware pseudo supervised object localization.

Stages ``spol/cls``, ``spol/cam``, ``spol/seg`` (each with ``train.py`` and ``test.py``); shared code in
``spol.options`` (command lines, defaults), ``spol.model``, ``spol.losses``, ``spol.pseudo_mask``,
``spol.visualize``.
See ``spol/README.md``.
"""
