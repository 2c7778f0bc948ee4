"""Formats only: atomic writes, images (SimpleITK, or MetaImage with numpy alone), dataset.json, preprocessed cases, the JSON reader."""
