"""A real SMTP server (aiosmtpd) on a loopback port that keeps every message it receives,
for tests of what the homeserver emails."""

from __future__ import annotations

import asyncio
import email
import email.policy
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.server import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    # The user the client authenticated as (AUTH), if it did.
    login: str | None

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None, "no text/plain part"
        return str(part.get_content())

    @property
    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html",))
        assert part is not None, "no text/html part"
        return str(part.get_content())


@dataclass
class MailSink:
    host: str
    port: int
    messages: list[Received] = field(default_factory=list)
    # Accepted logins (AUTH PLAIN/LOGIN) when the server asks for one.
    credentials: dict[str, str] | None = None
    # Recipients refused for good ("550" to RCPT), and each refusal made.
    refused: set[str] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.lower() in self.refused:
            self.refusals.append(address)
            return "550 5.1.1 Mailbox unavailable"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        received = Received(str(envelope.mail_from), list(envelope.rcpt_tos), message, login)
        async with self._arrived:
            self.messages.append(received)
            self._arrived.notify_all()
        return "250 Message accepted"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.credentials is not None
            and self.credentials.get(data.login.decode()) == data.password.decode()
        )
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    async def wait_for(self, count: int, timeout: float = 10.0) -> Received:
        """The `count`-th message received (1-based), waiting up to `timeout` seconds."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.messages) >= count), timeout)
            return self.messages[count - 1]


@asynccontextmanager
async def smtp_server(credentials: dict[str, str] | None = None) -> AsyncIterator[MailSink]:
    """An SMTP server on 127.0.0.1; with `credentials` (login → password) it requires AUTH
    (allowed without TLS, as this is loopback)."""
    sink = MailSink("127.0.0.1", free_port(), credentials=credentials)

    def protocol() -> SMTP:
        if credentials is None:
            return SMTP(sink, hostname="localhost")
        with warnings.catch_warnings():
            # Loopback only: AUTH without TLS is what the test means to do.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return SMTP(
                sink,
                hostname="localhost",
                authenticator=sink.authenticate,
                auth_required=True,
                auth_require_tls=False,
            )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, sink.host, sink.port)
    try:
        yield sink
    finally:
        server.close()
        await server.wait_closed()


SENDER = "Sotto Test <noreply@example.org>"
APP_NAME = "Sotto Test"


def email_config(sink: MailSink, **extra: Any) -> dict[str, Any]:
    """The homeserver's `email` section sending through `sink`."""
    return {
        "enabled": True,
        "smtp_host": sink.host,
        "smtp_port": sink.port,
        "notif_from": SENDER,
        "app_name": APP_NAME,
        **extra,
    }
