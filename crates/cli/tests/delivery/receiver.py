"""A webhook receiver for Storeline's delivery tests: verifies every request with the real
Standard Webhooks library and records what arrived.

    python3 receiver.py --port 0 --secret whsec_... [--fail-rate 0.5] [--status 400] [--hang]

Prints "listening on PORT" once ready. GET /_received returns the requests as JSON; POST
/_mode with {"fail_rate": 0, "status": 200, "hang": false} changes behaviour while running.
"""

import argparse
import json
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

args = None
lock = threading.Lock()
received = []  # every request: {id, verified, status, body, at}
mode = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/_received"):
            with lock:
                body = json.dumps(received).encode()
            self.reply(200, body, [("content-type", "application/json")])
        else:
            self.reply(404)

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(n)
        if self.path.startswith("/_mode"):
            with lock:
                mode.update(json.loads(raw))
            self.reply(200, b"{}")
            return
        with lock:
            m = dict(mode)
        if m.get("hang"):
            time.sleep(3600)
            return
        verified = False
        error = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            Webhook(args.secret).verify(raw, headers)
            verified = True
        except Exception as e:  # noqa: BLE001 - any failure is recorded and answered 400
            error = str(e)
        status = m.get("status", 200)
        if verified and random.random() < m.get("fail_rate", 0.0):
            status = m.get("fail_status", 503)
        if not verified:
            status = 401
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with lock:
            received.append({
                "id": headers.get("webhook-id"), "verified": verified, "error": error,
                "status": status, "body": body, "at": time.time(),
                "signatures": headers.get("webhook-signature", "").count("v1,"),
                "idempotency_key": headers.get("idempotency-key"),
            })
        extra = [("retry-after", str(m["retry_after"]))] if m.get("retry_after") and status >= 300 else []
        self.reply(status, b"ok" if status < 300 else b"no", extra)


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--secret", required=True)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--hang", action="store_true")
    args = p.parse_args()
    mode.update({"fail_rate": args.fail_rate, "status": args.status, "hang": args.hang})
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    print(f"listening on {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
