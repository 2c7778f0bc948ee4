"""Formats only: atomic writes, images (SimpleITK), dataset.json, preprocessed cases, the JSON reader."""
