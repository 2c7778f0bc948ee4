"""The `verify` stage: every check of a converted dataset, cached by file size and time."""
