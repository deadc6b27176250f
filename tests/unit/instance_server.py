"""A tiny HTTP server the pool and front tests run as instances: `python tests/unit/instance_server.py PORT`.

GET /health answers 200. Any other request answers 200 with JSON: the instance's pid, the method, path,
headers and body it got, after doing what the path says:

    /sleep/SECONDS   sleep that long first
    /child/SECONDS   start a `sleep SECONDS` child in the same process group (its pid in the answer), then
                     sleep as long: a timeout must end the child too
    /exit            exit at once, answering nothing (a crash)
    /status/CODE     answer CODE
    /gzip            answer a gzip-compressed body with Content-Encoding: gzip (passed through as is)
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACTIVE = threading.Semaphore(1000)


class Handler(BaseHTTPRequestHandler):
    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/health":
            self._send(200, b"ok")
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        answer = {"pid": os.getpid(), "method": self.command, "path": self.path,
                  "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode(errors="replace")}
        status = 200
        if parts[0] == "sleep":
            time.sleep(float(parts[1]))
        elif parts[0] == "child":
            answer["child"] = subprocess.Popen(["sleep", parts[1]]).pid
            print(json.dumps({"child": answer["child"]}), flush=True)
            time.sleep(float(parts[1]))
        elif parts[0] == "exit":
            os._exit(3)
        elif parts[0] == "status":
            status = int(parts[1])
        elif parts[0] == "gzip":
            self._send(200, gzip.compress(b"compressed"), [("Content-Encoding", "gzip")])
            return
        self._send(status, json.dumps(answer).encode(), [("Content-Type", "application/json"), ("X-Instance", "yes")])

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle  # noqa: N815

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        for key, value in headers or []:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
