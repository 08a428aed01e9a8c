"""Learning side of reenactfaces: sDiT, diffusion, loader, trainer, anchored sampler, metrics."""
