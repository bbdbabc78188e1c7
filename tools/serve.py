"""A local search page over an index.

    python -m tools.serve INDEX [--port 8000] [--host 127.0.0.1]

    GET /                       the page: a search box; results as frame strips, a click plays the clip
    GET /api/search?q=TEXT&k=N  JSON: {"query", "description", "results": [{rank, score, id, path, duration,
                                frames, name, thumb, video}]}
    GET /thumb/ID.jpg           the frame strip of indexed video ID
    GET /video/ID               indexed video ID itself (Range requests supported)

Files are addressed by their number in the index, never by a path: only indexed videos and their strips
are served, and anything else (``..``, absolute paths, unknown numbers) is refused. The server binds to
127.0.0.1 unless ``--host`` says otherwise.
"""
from __future__ import annotations

import argparse
import json
import mimetypes
import os
import re
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tools.search import Searcher, hit_record
from tools.store import IndexFolderError

MAX_K = 100
_ID = re.compile(r"^/(thumb|video)/(\d{1,12})(\.jpg)?$")


def make_handler(searcher: Searcher, page: str):
    by_id = {e.id: e for e in searcher.entries}

    class Handler(BaseHTTPRequestHandler):
        server_version = "univtr-search"

        def log_message(self, fmt, *args):  # one line per request on stderr, without the default's noise
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

        def send_json(self, status: int, data) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def refuse(self, status: int = HTTPStatus.NOT_FOUND) -> None:
            self.send_json(status, {"error": "not an indexed file"})

        def do_GET(self):  # noqa: N802  (http.server's name)
            url = urlsplit(self.path)
            if url.path == "/":
                body = page.encode()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif url.path == "/api/search":
                self.api_search(parse_qs(url.query))
            else:
                self.serve_file(url.path)

        def api_search(self, params) -> None:
            query = (params.get("q") or [""])[0].strip()
            try:
                k = int((params.get("k") or ["5"])[0])
            except ValueError:
                k = 0
            if not query or not 1 <= k <= MAX_K:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": f"give a query q and 1 <= k <= {MAX_K}"})
                return
            hits = searcher.search([query], k)[0]
            results = [{**hit_record(h), "name": h.entry.name, "thumb": f"/thumb/{h.entry.id}.jpg",
                        "video": f"/video/{h.entry.id}"} for h in hits]
            self.send_json(HTTPStatus.OK, {"query": query, "description": searcher.description, "results": results})

        def serve_file(self, path: str) -> None:
            match = _ID.match(path)
            entry = by_id.get(int(match.group(2))) if match else None
            if entry is None or (match.group(1) == "thumb") != bool(match.group(3)):
                self.refuse()
                return
            file = searcher.store.thumb_path(entry.path) if match.group(1) == "thumb" else entry.path
            try:
                size = os.path.getsize(file)
                handle = open(file, "rb")
            except OSError:
                self.refuse(HTTPStatus.GONE)
                return
            with handle:
                start, end = 0, size - 1
                ranged = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", ""))
                if ranged and (ranged.group(1) or ranged.group(2)):
                    if ranged.group(1):
                        start = int(ranged.group(1))
                        end = min(int(ranged.group(2)), size - 1) if ranged.group(2) else size - 1
                    else:
                        start = max(0, size - int(ranged.group(2)))
                    if start > end:
                        self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.end_headers()
                        return
                    self.send_response(HTTPStatus.PARTIAL_CONTENT)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", mimetypes.guess_type(str(file))[0] or "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                handle.seek(start)
                remaining = end - start + 1
                while remaining > 0:
                    chunk = handle.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)

    return Handler


def make_server(searcher: Searcher, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    from tools.html import search_page  # start-up

    server = ThreadingHTTPServer((host, port), make_handler(searcher, search_page(searcher.description)))
    server.daemon_threads = True
    return server


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.serve", description=__doc__.split("\n")[0])
    parser.add_argument("index", help="an index folder written by python -m tools.index")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--checkpoint", default=None, help="the index's model when it moved")
    args = parser.parse_args(argv)
    from modules.clip import CheckpointError  # start-up

    try:
        searcher = Searcher(args.index, args.checkpoint)
        server = make_server(searcher, args.host, args.port)
    except (CheckpointError, IndexFolderError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {searcher.description} on http://{args.host}:{server.server_address[1]}/ (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
