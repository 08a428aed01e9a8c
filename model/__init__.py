"""Learning side of reenactfaces: sDiT (and its Conditioning), diffusion, loader, trainer (meter, sample
grids), anchored sampler, reenact, evaluation, metrics."""
