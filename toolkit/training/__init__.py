"""Training: patch sampling, batched augmentation on the training device, loss, schedule,
checkpoints, the epoch loop, cross-validation splits, cascade inputs and several devices.

The entry point is :func:`toolkit.training.stage.train_fold` (the job, the processes); the
epoch loop each process runs is :mod:`toolkit.training.trainer`, and the parts it calls
live in their own modules (``sampling``, ``loader``, the ``augmentation`` package, ``loss``,
``schedule``, ``checkpoint``, ``history``, ``distributed``, ``cascade``, ``validation``).
"""
