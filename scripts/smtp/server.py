"""A real SMTP server for ferry's tests: aiosmtpd, with STARTTLS required and AUTH
(PLAIN/LOGIN) for one user, delivering every message into a maildir.

    python server.py HOST PORT CERT KEY MAILDIR USER PASSWORD
"""
import asyncio
import signal
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword

host, port, cert, key, maildir, user, password = sys.argv[1:8]


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == user
        and auth_data.password.decode() == password
    )
    return AuthResult(success=ok)


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(
    Mailbox(maildir),
    hostname=host,
    port=int(port),
    tls_context=context,
    require_starttls=True,
    authenticator=authenticator,
    auth_required=True,
)
controller.start()
print(f"smtp listening on {host}:{port}", flush=True)
loop = asyncio.new_event_loop()
stop = asyncio.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(sig, stop.set)
loop.run_until_complete(stop.wait())
controller.stop()
