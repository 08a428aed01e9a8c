"""Learning side of reenactfaces: sDiT (and its Conditioning), diffusion, loader, trainer (meter, sample
grids), anchored sampler (generated or source anchor), landmark retargeting, reenact, evaluation, metrics."""
