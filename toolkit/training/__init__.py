"""Training: patch sampling, batched augmentation on the training device, loss, schedule,
checkpoints, the epoch loop, cross-validation splits, cascade inputs and several devices.

The entry point is :func:`toolkit.training.trainer.train_fold`; the parts it calls live in
their own modules (``sampling``, ``loader``, ``augmentation``, ``loss``, ``schedule``,
``checkpoint``, ``history``, ``distributed``, ``cascade``, ``validation``).
"""
