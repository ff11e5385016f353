"""The modules a LegoBlock is built from: the block itself, its layers, the spectral latent and the sphere math."""
