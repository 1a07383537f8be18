"""Sending email through the configured SMTP server (`email:` in the config).

One job: hand a finished message to the SMTP server. What a message says is the caller's
business (homeserver/handlers/threepids.py). Messages carry secrets (validation links), so
nothing here logs more than the recipient's domain.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from email import headerregistry
from email.message import EmailMessage
from email.policy import Policy
from email.policy import default as default_policy
from email.utils import formatdate, make_msgid

import aiosmtplib

from homeserver.config import EmailConfig

log = logging.getLogger(__name__)

# An SMTP server that does not answer within this is treated as down.
SMTP_TIMEOUT_S = 30.0


class MailError(Exception):
    """The message could not be handed to the SMTP server. `permanent`: the server refused
    this message for good (a 5xx reply to its recipient or its content), so sending it
    again will not help; otherwise (unreachable, a timeout, a 4xx reply, refused login or
    sender) the server may take it later, and other messages fail alike meanwhile."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def is_permanent(error: Exception) -> bool:
    """A 5xx refusal of the message's recipient(s) or content: this message only."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        return bool(error.recipients) and all(500 <= r.code < 600 for r in error.recipients)
    if isinstance(error, (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError)):
        return 500 <= error.code < 600
    return False


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2]


class _UnfoldedHeader(headerregistry.UnstructuredHeader, headerregistry.BaseHeader):
    """A header written on one line, however long: the folding of a long unstructured value
    turns it into RFC 2047 encoded words, which mail clients do not decode in an URL
    (`List-Unsubscribe: <https://…>`, RFC 2369). Its values are short of SMTP's 998."""

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: {self}{policy.linesep}"


_HEADERS = headerregistry.HeaderRegistry()
_HEADERS.map_to_type("list-unsubscribe", _UnfoldedHeader)
# The message's own header classes stay when aiosmtplib writes it out with its SMTP policy.
POLICY = default_policy.clone(header_factory=_HEADERS)


class Mailer:
    def __init__(self, config: EmailConfig) -> None:
        self.config = config

    def message(
        self, to: str, subject: str, text: str, html: str, headers: Mapping[str, str] | None = None
    ) -> EmailMessage:
        """`headers`: more headers (e.g. `List-Unsubscribe`)."""
        msg = EmailMessage(policy=POLICY)
        msg["From"] = self.config.notif_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        sender_domain = recipient_domain(self.config.notif_from).rstrip(">") or None
        msg["Message-ID"] = make_msgid(domain=sender_domain)
        for name, value in (headers or {}).items():
            msg[name] = value
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg

    async def send(
        self, to: str, subject: str, text: str, html: str, headers: Mapping[str, str] | None = None
    ) -> None:
        cfg = self.config
        msg = self.message(to, subject, text, html, headers)
        # STARTTLS: required, opportunistic (None: when offered) or never.
        start_tls: bool | None = (
            True if cfg.require_transport_security else (None if cfg.enable_tls else False)
        )
        try:
            await aiosmtplib.send(
                msg,
                # The envelope names the one address given, whatever the headers might parse to.
                recipients=[to],
                hostname=cfg.smtp_host,
                port=cfg.smtp_port,
                username=cfg.smtp_user,
                password=cfg.smtp_pass if cfg.smtp_user else None,
                use_tls=cfg.force_tls,
                start_tls=False if cfg.force_tls else start_tls,
                timeout=SMTP_TIMEOUT_S,
            )
        except (aiosmtplib.SMTPException, OSError) as e:
            # Only the error's type and SMTP code: the server's reply may quote the address.
            code = getattr(e, "code", None)
            log.warning(
                "could not send email to a recipient at %s: %s%s",
                recipient_domain(to),
                type(e).__name__,
                f" ({code})" if code is not None else "",
            )
            raise MailError(type(e).__name__, permanent=is_permanent(e)) from None
        log.info("sent email to a recipient at %s", recipient_domain(to))
