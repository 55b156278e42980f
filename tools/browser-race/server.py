"""Serves a folder on 127.0.0.1 for the browser race, cross-origin isolated (the headers that
let transformers.js's wasm backend use threads), with JavaScript and wasm MIME types.

Usage: server.py PORT FOLDER

From the transformers.js baseline harness (../shared/tools/tjs-baseline/server.py).
"""
import functools
import http.server
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
    }

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, fmt, *args):
        sys.stderr.write("%s\n" % (fmt % args))


port, folder = int(sys.argv[1]), sys.argv[2]
http.server.ThreadingHTTPServer(
    ("127.0.0.1", port), functools.partial(Handler, directory=folder)
).serve_forever()
