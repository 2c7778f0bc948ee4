"""The `preprocess` stage: every case cropped, normalized and resampled (:mod:`.case`), stored for fast patch reads."""
