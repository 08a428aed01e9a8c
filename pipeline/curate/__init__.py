"""Curation (`make curate`, `python -m pipeline.curate`): public video links -> Parquet manifests.

Holds the stages (download, probe, scenes, faces, landmarks, verify (is the tracked face a real,
frontal human face: the 478-point mesh on sampled crops), quality, filters), their composition
(stages.py: one video's analysis; runner.py: Ray Data or sequential over many videos), the inputs
(sources.py: sources.csv / optout.csv) and the outputs (manifest.py: clips / videos / rejections).
May import the pipeline base (paths, ids, configfile, schema, video_io); never pipeline.shards,
pipeline.synth or model.
"""
