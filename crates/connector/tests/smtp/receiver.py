"""A real SMTP server (aiosmtpd) for the smtp connector's tests.

Listens on 127.0.0.1 on a free port, prints `READY <port>`, then one JSON line per message it
accepts: the envelope and the message parsed by Python's email library (so the test checks what
a mail client would see, not the bytes the connector wrote). Recipients whose local part starts
with `reject` get 550, `tempfail` get 451, and `slow` get no answer for an hour (a relay that
stops answering mid-transaction).

    python3 receiver.py [--cert CERT --key KEY] [--user USER --password PASSWORD] [--log-rcpt]

With --log-rcpt it also prints `{"rcpt": ADDRESS, "reply": REPLY}` for every RCPT as it arrives
(REPLY null for a `slow` one), so a test can count the attempts it refused or left unanswered.

With a certificate the server requires STARTTLS before MAIL; with a user it requires AUTH.
"""

import argparse
import asyncio
import email
import email.policy
import json
import logging
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult


class Handler:
    def __init__(self, log_rcpt):
        self.log_rcpt = log_rcpt

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local.startswith("reject"):
            reply = "550 5.1.1 no such mailbox here"
        elif local.startswith("tempfail"):
            reply = "451 4.3.0 try again later"
        elif local.startswith("slow"):
            reply = None
        else:
            reply = "250 OK"
        if self.log_rcpt:
            print(json.dumps({"rcpt": address, "reply": reply}), flush=True)
        if reply is None:
            await asyncio.sleep(3600)
            reply = "451 4.4.2 answered too late"
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)

        def part(kind):
            p = msg.get_body(preferencelist=(kind,))
            return p.get_content() if p is not None else None

        out = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "auth": session.authenticated,
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "reply_to": str(msg["Reply-To"]) if msg["Reply-To"] else None,
            "subject": str(msg["Subject"]),
            "message_id": str(msg["Message-ID"]),
            "delivery": str(msg["X-Storeline-Delivery"]),
            "content_type": msg.get_content_type(),
            "text": part("plain"),
            "html": part("html"),
        }
        print(json.dumps(out), flush=True)
        return "250 2.0.0 queued as " + out["delivery"]


async def main():
    # The tests provoke failed handshakes and logins on purpose; the client's verdict is what
    # they check, so aiosmtpd's tracebacks and deprecation notes are noise.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--log-rcpt", action="store_true")
    args = ap.parse_args()

    opts = {}
    if args.cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.cert, args.key)
        opts.update(tls_context=ctx, require_starttls=True)
    if args.user:

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (auth_data.login.decode(), auth_data.password.decode()) == (
                args.user,
                args.password,
            )
            # handled=False: aiosmtpd answers 535 itself (True would mean we had replied).
            return AuthResult(success=ok, handled=False)

        opts.update(authenticator=authenticator, auth_required=True)
    else:
        opts.update(auth_require_tls=False)

    handler = Handler(args.log_rcpt)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="localhost", **opts), "127.0.0.1", 0
    )
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    # Ends when the test kills the process (or closes our stdin).
    await loop.run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main())
