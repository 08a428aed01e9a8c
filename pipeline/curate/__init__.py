"""Curation (`make curate`, `python -m pipeline.curate`): public video links -> Parquet manifests.

Holds the stages (download, probe, scenes, faces, landmarks, verify (is the tracked face a real,
frontal human face: the 478-point mesh on sampled crops), insets (a face inside a picture-in-picture or black bars),
quality, filters), their composition
(decodepass.py: the analysis consumers' protocol and the one-decode-pass runner; stages.py: the DAG
config and one video's analysis; runner.py: Ray Data or sequential over many videos), the inputs
(sources.py: sources.csv / optout.csv) and the outputs (manifest.py: clips / videos / rejections).
May import the pipeline base (paths, ids, configfile, schema, video_io); never pipeline.shards,
pipeline.synth or model.
"""
