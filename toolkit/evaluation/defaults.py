"""Default parameters of evaluation and selection (no imports: the CLI reads them cheaply)."""

NSD_TOLERANCE_MM = 2.0  # normalized surface distance tolerance; see toolkit.evaluation.metrics
BOOTSTRAP_SAMPLES = 1000  # virtual validation sets, as in the method's robustness analysis
BOOTSTRAP_SEED = 12345
CONFIDENCE = 0.95
TIE_TOLERANCE = 0.0005  # mean Dice difference within which candidates tie
