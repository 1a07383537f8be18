"""Files in and out: encrypted attachments (AES-CTR + SHA-256, `v2`) via nio's helpers.

In an encrypted room the file is encrypted on the bot before upload and the key travels inside
the Megolm-encrypted event (`content.file`); the homeserver only ever stores ciphertext. In a
clear room the file is uploaded as is (`content.url`). Downloads verify the SHA-256 of the
ciphertext before decrypting (nio's `decrypt_attachment` raises on mismatch) and are bounded.
"""

from __future__ import annotations

import io
import mimetypes
from dataclasses import dataclass
from typing import Any

from nio import DownloadError, MemoryDownloadResponse, UploadResponse
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment

from clients.client import SottoAsyncClient

DEFAULT_MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024


class AttachmentError(Exception):
    """Upload, download or integrity check failed."""


def msgtype_for(mimetype: str) -> str:
    major = mimetype.split("/", 1)[0]
    return {"image": "m.image", "audio": "m.audio", "video": "m.video"}.get(major, "m.file")


def guess_mimetype(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


async def upload_file(
    client: SottoAsyncClient, data: bytes, filename: str, mimetype: str, encrypted: bool
) -> dict[str, Any]:
    """Upload `data` and return the message content that shares it."""
    info: dict[str, Any] = {"mimetype": mimetype, "size": len(data)}
    content: dict[str, Any] = {
        "msgtype": msgtype_for(mimetype),
        "body": filename,
        "filename": filename,
        "info": info,
    }
    if encrypted:
        ciphertext, keys = encrypt_attachment(data)
        mxc = await _upload(client, ciphertext, "application/octet-stream", None)
        content["file"] = {
            "url": mxc,
            "key": keys["key"],
            "iv": keys["iv"],
            "hashes": keys["hashes"],
            "v": keys.get("v", "v2"),
        }
    else:
        content["url"] = await _upload(client, data, mimetype, filename)
    return content


async def _upload(client: SottoAsyncClient, data: bytes, content_type: str, filename: str | None) -> str:
    resp, _ = await client.upload(
        lambda _got_429, _got_timeouts: io.BytesIO(data),
        content_type=content_type,
        filename=filename,
        filesize=len(data),
    )
    if not isinstance(resp, UploadResponse):
        raise AttachmentError(
            f"upload failed: {getattr(resp, 'status_code', '')} {getattr(resp, 'message', '')}"
        )
    return str(resp.content_uri)


@dataclass(frozen=True, slots=True)
class Attachment:
    """The file a media message refers to, as found in its (decrypted) content."""

    filename: str
    mimetype: str
    size: int | None
    url: str
    encryption: dict[str, Any] | None  # content.file for encrypted media

    @classmethod
    def from_content(cls, content: dict[str, Any]) -> Attachment | None:
        info = content.get("info") if isinstance(content.get("info"), dict) else {}
        assert isinstance(info, dict)
        filename = str(content.get("filename") or content.get("body") or "file")
        size = info.get("size") if isinstance(info.get("size"), int) else None
        mimetype = str(info.get("mimetype") or guess_mimetype(filename))
        file = content.get("file")
        if isinstance(file, dict) and isinstance(file.get("url"), str):
            return cls(filename, mimetype, size, file["url"], file)
        if isinstance(content.get("url"), str):
            return cls(filename, mimetype, size, content["url"], None)
        return None

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None


async def download_file(
    client: SottoAsyncClient, attachment: Attachment, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
) -> bytes:
    if attachment.size is not None and attachment.size > max_bytes:
        raise AttachmentError(f"file is larger than {max_bytes} bytes")
    resp = await client.download(mxc=attachment.url)
    if isinstance(resp, DownloadError) or not isinstance(resp, MemoryDownloadResponse):
        raise AttachmentError(f"download failed: {getattr(resp, 'status_code', '')}")
    body = bytes(resp.body)
    if len(body) > max_bytes:
        raise AttachmentError(f"file is larger than {max_bytes} bytes")
    if attachment.encryption is None:
        return body
    enc = attachment.encryption
    try:
        plaintext: bytes = decrypt_attachment(body, enc["key"]["k"], enc["hashes"]["sha256"], enc["iv"])
    except (KeyError, TypeError) as exc:
        raise AttachmentError("malformed encrypted file info") from exc
    except Exception as exc:  # nio raises EncryptionError on a bad hash or key
        raise AttachmentError(f"could not decrypt attachment: {type(exc).__name__}") from exc
    return plaintext
