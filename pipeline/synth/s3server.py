"""A real S3-protocol server on loopback for tests and the demo: moto's S3 service behind werkzeug.

    python -m pipeline.synth.s3server --port 9000 --bucket demo     # prints the environment to export

Only 127.0.0.1 is ever bound. Objects live in this process's memory (moto's backend), which is what
`kill()` relies on: it drops the listening socket and refuses every request already on a kept-alive
connection, as a crashed server would, while the stored objects survive like a real store's disks;
`restart()` serves them again on the same port. `kill_after(n, method)` does that from inside the
request path once `n` requests of that method have been answered, so a test can kill it mid-run.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

ACCESS_KEY = SECRET_KEY = "loopback-test"    # moto accepts any; the clients insist on some


class LoopbackS3:
    def __init__(self, port: int = 0):
        from moto.server import DomainDispatcherApplication, create_backend_app

        self._app = DomainDispatcherApplication(create_backend_app)
        self.port, self._server, self._thread = port, None, None
        self.dead = False
        self.counts: dict[str, int] = {}
        self._kill_at: tuple[str, int] | None = None
        self._lock = threading.Lock()

    # -------------------------------------------------------- life cycle
    def start(self) -> "LoopbackS3":
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):      # no access log line per request
            def log_request(self, *a, **k):
                pass

        self._server = make_server("127.0.0.1", self.port, self._wsgi, threaded=True, request_handler=Quiet)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.dead = False
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def kill(self) -> None:
        """Refuse everything from now on and stop listening; the stored objects survive."""
        self.dead = True
        threading.Thread(target=self.stop, daemon=True).start()   # may be called from a request thread

    def restart(self) -> None:
        deadline = time.time() + 10
        while self._server is not None and time.time() < deadline:   # kill()'s stop is asynchronous
            time.sleep(0.05)
        self._kill_at = None
        self.start()

    def kill_after(self, n: int, method: str = "PUT") -> None:
        """kill() once `n` more requests of `method` have been answered."""
        with self._lock:
            self._kill_at = (method, self.counts.get(method, 0) + n)

    def __enter__(self) -> "LoopbackS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -------------------------------------------------------- clients
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a client process needs (botocore, s3fs and pipeline.storage's pyarrow view read these)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def make_bucket(self, name: str) -> None:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
        s3.create_bucket(Bucket=name)

    # -------------------------------------------------------- the WSGI app with the kill switch
    def _wsgi(self, environ, start_response):
        if self.dead:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Connection", "close")])
            return [b"server killed"]
        out = self._app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "")
        with self._lock:
            self.counts[method] = self.counts.get(method, 0) + 1
            if self._kill_at and self._kill_at[0] == method and self.counts[method] >= self._kill_at[1]:
                self._kill_at = None
                self.kill()
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.synth.s3server", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    a = ap.parse_args(argv)
    with LoopbackS3(a.port) as srv:
        for b in a.bucket:
            srv.make_bucket(b)
        for k, v in srv.env().items():
            print(f"export {k}={v}")
        print(f"# serving S3 on {srv.endpoint} (buckets: {', '.join(a.bucket) or 'none'}); Ctrl-C stops it",
              file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    sys.exit(main())
