"""What the pipeline tests share: the smallest run-all that still runs every stage."""

# the smoke preset cut to one epoch of two iterations on folds 0 and 1, on the CPU, one worker
SMOKE_RUN_ALL_ARGS = [
    "--preset",
    "smoke",
    "--folds",
    "0,1",
    "--epochs",
    "1",
    "--iters-per-epoch",
    "2",
    "--val-iters",
    "1",
    "--device",
    "cpu",
    "--workers",
    "1",
    "--quiet",
]
