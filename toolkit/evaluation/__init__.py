"""Evaluation of the cross-validation and model selection.

``metrics`` (per case and class), ``bootstrap`` (paired intervals over virtual validation
sets), ``candidates`` (the selection rule), ``postprocessing`` (its empirical choice),
``selection`` (``selection.json``), ``report`` and ``plots``; ``stages`` runs
``toolkit evaluate`` and ``toolkit select``.
"""
