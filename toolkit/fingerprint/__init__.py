"""The `fingerprint` stage: what planning needs to know about the training cases."""
