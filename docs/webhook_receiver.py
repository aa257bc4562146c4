#!/usr/bin/env python3
"""A tiny Ordo webhook receiver: verifies the Standard Webhooks signature and prints the event.

    pip install standardwebhooks          # optional: without it, the stdlib check below is used
    ORDO_WEBHOOK_SECRET=whsec_... python3 docs/webhook_receiver.py 8000

Answer 2xx only after the event is safely handled: Ordo retries anything else, and it delivers
at least once, so deduplicate on the `webhook-id` header (the event id).
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ["ORDO_WEBHOOK_SECRET"]
TOLERANCE_S = 5 * 60  # reject stale or replayed requests


def verify_stdlib(body: bytes, headers) -> None:
    """The whole scheme in ten lines: HMAC-SHA256 over `id.timestamp.body`."""
    msg_id, ts, sigs = headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
    if abs(time.time() - int(ts)) > TOLERANCE_S:
        raise ValueError("timestamp out of tolerance")
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    # Several signatures (space-separated) while a secret rotation is in its grace period.
    if not any(hmac.compare_digest(expected, s) for s in sigs.split(" ")):
        raise ValueError("no matching signature")


try:
    from standardwebhooks.webhooks import Webhook

    def verify(body: bytes, headers) -> None:
        Webhook(SECRET).verify(body, {k.lower(): v for k, v in headers.items()})

    VERIFIER = "standardwebhooks library"
except ImportError:
    verify = verify_stdlib
    VERIFIER = "stdlib hmac"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            verify(body, self.headers)
        except Exception as err:  # noqa: BLE001 - any failure means "not from Ordo"
            print(f"REJECTED: {err}", flush=True)
            self.send_response(400)  # permanent: Ordo dead-letters it instead of retrying
            self.end_headers()
            return
        event = json.loads(body)
        print(f"{self.headers['webhook-id']} #{event.get('ordooffset')} {event['type']}: "
              f"{json.dumps(event.get('data'))}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    print(f"listening on 127.0.0.1:{port}, verifying with the {VERIFIER}", flush=True)
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
