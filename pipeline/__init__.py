"""Data side of reenactfaces. Never imports `model`.

Rooms, imports one way (base <- curate <- shards <- report/demo):
  (this folder)  the shared base: paths (the data root, local or s3://..., atomic writes), storage (fsspec,
                 object-store rules), ids, configfile, schema (the tables' columns),
                 records (their typed rows), video_io, threads (torch's CPU threads for a block), quiet
                 (known native-library noise filtered from stderr);
                 and report.py (dataset report) and demo.py (the whole chain end to end).
  curate/        links -> downloaded, scene-cut, face-tracked, filtered clips (`make curate`).
  shards/        accepted clips -> WebDataset shards with latents, CLIP, landmarks; opt-out (`make shards`).
  synth/         the generated test corpus and its loopback server: used by demo, tests and benchmarks only.
"""
