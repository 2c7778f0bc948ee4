"""A trained model as one file: ``toolkit export-model`` and ``toolkit import-model``."""
