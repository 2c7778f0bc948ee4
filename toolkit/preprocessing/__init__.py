"""Crop, normalize, resample, and store cases for fast random patch reads."""
