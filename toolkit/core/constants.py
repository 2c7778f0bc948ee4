"""The method's numbers that more than one module uses, defined once (nnU-Net v2 2.8.1's values).

A number used by one module only stays there, named, beside the rule that uses it.
"""

from __future__ import annotations

# an axis is "anisotropic" when its spacing (or a patch edge) is more than this many times
# another's: planning's target spacing, resampling's separate coarse axis, the 2D-style
# spatial augmentation of flat patches (nnU-Net's ANISO_THRESHOLD)
ANISOTROPY_THRESHOLD = 3.0

# the U-Net's building blocks: LeakyReLU slope and instance-norm epsilon
LEAKY_RELU_SLOPE = 1e-2
INSTANCE_NORM_EPS = 1e-5

# cross-validation: folds of a new splits.json and the seed that shuffles the cases
NUM_FOLDS = 5
SPLIT_SEED = 12345
# the fold that trains on every case (nnU-Net v2's "all"): models/<config>/fold_all/
FOLD_ALL = "all"

# sliding-window step as a fraction of the patch size
STEP_SIZE = 0.5

# evaluation and selection: the normalized surface distance's tolerance, the bootstrap's
# virtual validation sets (as in the method's robustness analysis), its seed and confidence,
# and the mean Dice difference within which candidates tie (a tie goes to the simpler one)
NSD_TOLERANCE_MM = 2.0
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 12345
CONFIDENCE = 0.95
TIE_TOLERANCE = 0.0005
