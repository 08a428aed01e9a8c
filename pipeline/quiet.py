"""Known noise of native libraries, silenced where it is written.

MediaPipe's TFLite/absl C++ code writes a few lines straight to file descriptor 2 the first time a
graph runs ("Created TensorFlow Lite XNNPACK delegate", "All log messages before
absl::InitializeLog()", "Feedback manager requires a model with a single signature"), and Ray's C++
core worker logs an E-level line for every Ray Data actor pool it creates (Ray Data itself puts the
pool's constructor arguments in the object store). No environment variable turns these off
(GLOG_minloglevel, TF_CPP_MIN_LOG_LEVEL and ABSL_MIN_LOG_LEVEL were tried), so
`native_stderr_filtered` routes fd 2 through a pipe for the block: a thread passes every line on at
once, except exactly these known ones. Real errors and progress lines still reach the terminal live.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

NATIVE_NOISE = (
    "Created TensorFlow Lite XNNPACK delegate",
    "All log messages before absl::InitializeLog() is called",
    "Feedback manager requires a model with a single signature",
    "Using NORM_RECT without IMAGE_DIMENSIONS",
    "has constructor arguments in the object store and max_restarts > 0",
)


def is_native_noise(line: str) -> bool:
    return any(n in line for n in NATIVE_NOISE)


@contextmanager
def native_stderr_filtered():
    """fd 2 (C/C++ writes included) goes through a filtering pipe for the block."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):   # pytest capture or an odd stream: nothing to redirect
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    r, w = os.pipe()
    os.dup2(w, fd)
    os.close(w)

    def pump():
        with os.fdopen(r, "rb") as pipe:
            for raw in pipe:
                if not is_native_noise(raw.decode("utf-8", "replace")):
                    os.write(saved, raw)

    t = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    t.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)          # the pipe's last writer goes away: the pump reads to EOF and stops
        t.join(timeout=2.0)
        if not t.is_alive():        # a child that inherited the pipe keeps it open: keep `saved` for it
            os.close(saved)
