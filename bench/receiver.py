#!/usr/bin/env python3
"""A stand-in for the Next.js revalidation route: answers 200 to every POST and appends
one line per tag to the log: arrival time (Unix seconds, float), tag.

    python3 bench/receiver.py PORT LOGFILE
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, path = int(sys.argv[1]), sys.argv[2]
log = open(path, "a", buffering=1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        now = time.time()
        tags = json.loads(body).get("tags", [])
        log.write("".join(f"{now:.6f}\t{t}\n" for t in tags))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
