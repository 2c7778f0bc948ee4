"""Prediction: sliding window, ensembles, postprocessing, export to the original geometry.

Needs nothing from ``toolkit.training``, so a container carries no trainer.

One job per module: :mod:`~toolkit.inference.stage` (what ``toolkit predict`` and ``toolkit
ensemble`` do), :mod:`~toolkit.inference.options` (how a model is loaded and run, one value),
:mod:`~toolkit.inference.loading` (model folder -> plans and networks),
:mod:`~toolkit.inference.predictor` (the predictor: one case, raw or preprocessed),
:mod:`~toolkit.inference.first_stage` (a cascade's input from its first stage),
:mod:`~toolkit.inference.sliding_window`, :mod:`~toolkit.inference.compiled`,
:mod:`~toolkit.inference.export` (back to the input's grid), :mod:`~toolkit.inference.inputs`
and :mod:`~toolkit.inference.files` (cases found, predicted and written; configuration
ensembles), :mod:`~toolkit.inference.ensemble` (saved probabilities and the averaging rule),
:mod:`~toolkit.inference.preview` (a picture of a segmentation: ``predict --preview`` and the
evaluation report; the one module here that imports matplotlib, which the container image does
not install).
"""
