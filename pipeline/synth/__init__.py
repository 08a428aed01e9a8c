"""The generated test corpus with known ground truth (corpus.py, built from package-shipped face
photos by heads.py; face-like non-faces and turned heads by lookalikes.py), the loopback server that
plays public video hosts for yt-dlp (server.py), and a loopback S3-protocol server (s3server.py, moto)
for object-store data roots.

Used only by pipeline.demo, the tests and the benchmarks: no product module imports it.
May import anything under pipeline/.
"""
