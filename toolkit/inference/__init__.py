"""Prediction: sliding window, ensembles, postprocessing, export to the original geometry.

Needs nothing from ``toolkit.training``, so a container carries no trainer.
"""
