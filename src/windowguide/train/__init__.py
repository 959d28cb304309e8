"""Training: the EDM denoising loss for the built-in UNet, and the benchmark's feature classifier."""
