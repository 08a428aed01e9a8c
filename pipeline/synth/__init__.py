"""The generated test corpus with known ground truth (corpus.py, built from package-shipped face
photos by heads.py; face-like non-faces and turned heads by lookalikes.py) and the loopback server that plays public video hosts for yt-dlp (server.py).

Used only by pipeline.demo, the tests and the benchmarks: no product module imports it.
May import anything under pipeline/.
"""
