"""Input and output: images (SimpleITK), dataset.json, MSD conversion, integrity checks."""
