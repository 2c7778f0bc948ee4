"""Evaluation of the cross-validation and model selection.

``metrics`` (per case and class), ``bootstrap`` (paired intervals over virtual validation
sets), ``candidates`` (the selection rule), ``postprocessing`` (its empirical choice),
``tables`` (the evaluation files), ``report`` and ``plots``; ``stage`` runs ``toolkit
evaluate`` and ``toolkit select`` (``selection.json`` is the contract in
:mod:`toolkit.core.selection`).
"""
