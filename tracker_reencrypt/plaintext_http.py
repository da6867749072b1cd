"""The one-line plain-text answers of the probe endpoints (the worker's /livez and /readyz, the
exporter's /healthz): what a kubelet or a person with curl reads."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


def send_text(handler: BaseHTTPRequestHandler, code: int, text: str) -> None:
    body = (text + "\n").encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
