"""A webhook receiver for Storeline's delivery tests: verifies every request with the real
Standard Webhooks library and records what arrived.

    python3 receiver.py --port 0 --secret whsec_... [--old-secret whsec_...]
                        [--fail-rate 0.5] [--status 400] [--hang]

Prints "listening on PORT" once ready. GET /_received returns the requests as JSON
(`?since=N` skips the first N, so a poller can read only what is new); POST /_mode with
{"fail_rate": 0, "fail_status": 503, "status": 200, "hang": false, "retry_after": 2} changes
behaviour while running.

Each record: id (webhook-id), idempotency_key, path, verified (with --secret), verified_old
(with --old-secret: what a receiver still holding the rotated-out secret would decide), error,
status (the answer; null while hanging), hung, signatures (how many `v1,` entries), body, at
(arrival, seconds since the epoch), authorization (the header, if any).
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
received = []  # every request, in arrival order
mode = {}


def verify(secret, raw, headers):
    """(verified, error) of one request under one secret, by the standardwebhooks library."""
    if not secret:
        return None, None
    try:
        Webhook(secret).verify(raw, headers)
        return True, None
    except Exception as e:  # noqa: BLE001 - any failure is recorded
        return False, f"{type(e).__name__}: {e}"


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
            since = 0
            if "since=" in self.path:
                since = int(self.path.split("since=", 1)[1].split("&", 1)[0])
            with lock:
                body = json.dumps(received[since:]).encode()
            self.reply(200, body, [("content-type", "application/json")])
        else:
            self.reply(404)

    def do_POST(self):
        arrived = time.time()
        n = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(n)
        if self.path.startswith("/_mode"):
            with lock:
                mode.update(json.loads(raw))
            self.reply(200, b"{}")
            return
        with lock:
            m = dict(mode)
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified, error = verify(args.secret, raw, headers)
        verified_old, _ = verify(args.old_secret, raw, headers)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        rec = {
            "id": headers.get("webhook-id"), "idempotency_key": headers.get("idempotency-key"),
            "path": self.path, "verified": verified, "verified_old": verified_old,
            "error": error, "status": None, "hung": False,
            "signatures": headers.get("webhook-signature", "").count("v1,"),
            "body": body, "at": arrived, "authorization": headers.get("authorization"),
        }
        if m.get("hang"):
            rec["hung"] = True
            with lock:
                received.append(rec)
            time.sleep(3600)
            return
        status = m.get("status", 200)
        if verified and random.random() < m.get("fail_rate", 0.0):
            status = m.get("fail_status", 503)
        if not verified:
            status = 401
        rec["status"] = status
        with lock:
            received.append(rec)
        extra = []
        if m.get("retry_after") and status >= 300:
            extra = [("retry-after", str(m["retry_after"]))]
        self.reply(status, b"ok" if status < 300 else b"no", extra)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Bursts of attempts (concurrency 32 per connector) must not find the backlog full.
    request_queue_size = 256


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--secret", required=True)
    p.add_argument("--old-secret", default=None)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--hang", action="store_true")
    args = p.parse_args()
    mode.update({"fail_rate": args.fail_rate, "status": args.status, "hang": args.hang})
    srv = Server(("127.0.0.1", args.port), Handler)
    print(f"listening on {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
