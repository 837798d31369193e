"""Named defaults of the MagicFace reference implementation (SD 2.1-base pipeline)."""

# Gaussian smoothing of segmentation maps and of the guidance-rate map.
GAUSSIAN_KERNEL_SIZE = 3
GAUSSIAN_SIGMA = 0.5

# Semantic CFG: the per-pixel rate is clamped to RATE_CLAMP, then capped at MAX_GUIDANCE / cfg
# so that cfg * rate never exceeds MAX_GUIDANCE.
RATE_CLAMP = (0.8, 3.0)
MAX_GUIDANCE = 15.0
RATE_EPS = 1e-8

# Segmentation: epsilon of the per-token spatial-mean normalisation; the start-of-text token
# position (its map on the uncond row marks the background); ca_scale below this value
# restricts concept regions to the foreground (strict test on a Python float).
NORM_EPS = 1e-8
START_TOKEN = 0
CA_SCALE_FOREGROUND_THRESHOLD = 0.9
CA_SCALE_SINGLE_CONCEPT = 0.9
CA_SCALE_MULTI_CONCEPT = 0.6  # the published multi-concept examples' ca_scale

# Reference masks: loaded at 128x128, a pixel is "on" only when its 8-bit value is 255.
REFERENCE_MASK_SIZE = 128
REFERENCE_MASK_ON_VALUE = 255

# Sampling defaults of the reference run: 50 DDIM steps, CFG 7.5, RSA on steps 0..20,
# RBA afterwards; the 2x-upsampled 32x32 segmentation drives a 64x64 latent.
REFERENCE_STEPS = 50
REFERENCE_CFG = 7.5
REFERENCE_INJECT_STEP = 20
REFERENCE_SEGMENTATION_DOWNSCALE = 2
