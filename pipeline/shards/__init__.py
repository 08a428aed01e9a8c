"""Shards (`make shards`, `python -m pipeline.shards`): accepted clips -> WebDataset shards.

Holds the config (config.py), the run's order (build.py), clip decoding (decode.py: one pass per
video), the encoders (encode.py: VAE, CLIP, landmarks per clip), which models a run loads and their
tiny local stand-ins (model_sets.py), the tiny VAE's CPU fit with its time estimate (vaefit.py),
the encode runners and shard packing (writer.py), the on-disk format (io.py: shards, index, tables,
feature cache), still-portrait pseudo-clips (stills.py) and opt-out (optout.py;
`python -m pipeline.shards.optout verify`).
May import the pipeline base and pipeline.curate; never pipeline.synth or model.
"""
