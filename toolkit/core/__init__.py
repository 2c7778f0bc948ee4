"""Rules shared by two stages or more, one owner each (see docs/ARCHITECTURE.md).

``labels`` (foreground values, one-hot, label storage), ``device`` (device, precision,
autocast), ``checkpoint`` (the checkpoint format), ``cascade`` (the cascade's input),
``cropping`` and ``resampling`` (the grid a case is preprocessed to), ``constants`` (the
method's numbers), and the file contracts between stages: ``plans``, ``fingerprint``,
``splits``, ``selection``, ``postprocessing``.
"""
