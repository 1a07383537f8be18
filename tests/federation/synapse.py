"""A real Synapse as a federation peer, on loopback, for tests.

`ensure_synapse()` installs the pinned Synapse into `.cache/synapse-venv` (gitignored) on first
use. `SynapseServer` writes a config (TLS certificate from the test CA, trust in that CA,
loopback allowed, rate limits lifted, shared-secret registration), starts Synapse as a
subprocess with one TLS listener (client + federation, which is its server name's port)
and one plain-HTTP client listener, and stops it again. Every step is bounded in time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.federation.support import CertAuthority
from tests.support.server import free_port

SYNAPSE_VERSION = "1.163.2"
REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".cache" / "synapse-venv"
PYTHON = VENV / "bin" / "python"
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 90
SHARED_SECRET = "synapse-test-secret"


def ensure_synapse() -> Path:
    """Install Synapse into its own virtualenv if it is not there yet; return its python."""
    if PYTHON.exists():
        check = subprocess.run(
            [str(PYTHON), "-c", "import synapse; print(synapse.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check.returncode == 0 and check.stdout.strip() == SYNAPSE_VERSION:
            return PYTHON
    VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "-q", f"matrix-synapse=={SYNAPSE_VERSION}"],
        check=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    return PYTHON


class SynapseServer:
    def __init__(
        self,
        directory: str,
        ca: CertAuthority,
        default_room_version: str = "11",
        experimental_features: dict[str, Any] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.ca = ca
        self.fed_port = free_port()
        self.client_port = free_port()
        self.server_name = f"127.0.0.1:{self.fed_port}"
        self.base_url = f"http://127.0.0.1:{self.client_port}"
        self.default_room_version = default_room_version
        # Synapse's `experimental_features` (e.g. {"msc4354_enabled": True}); none by default.
        self.experimental_features = dict(experimental_features or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "homeserver.log"

    def write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        log_config = self.dir / "log.yaml"
        log_config.write_text(
            "version: 1\n"
            "formatters:\n  precise:\n    format: '%(asctime)s - %(name)s - %(levelname)s - %(message)s'\n"
            "handlers:\n  file:\n    class: logging.FileHandler\n    formatter: precise\n"
            f"    filename: {self.log_path}\n"
            "root:\n  level: INFO\n  handlers: [file]\n"
            "disable_existing_loggers: false\n"
        )
        unlimited = {"per_second": 10000, "burst_count": 10000}
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "pid_file": str(self.dir / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.fed_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [{"names": ["client", "federation"], "compress": False}],
                },
                {
                    "port": self.client_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                },
            ],
            "tls_certificate_path": self.ca.cert_file,
            "tls_private_key_path": self.ca.key_file,
            "federation_custom_ca_list": [self.ca.ca_file],
            "federation_verify_certificates": True,
            "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
            # IP-literal server names are checked against the blocklist alone.
            "ip_range_blacklist": [],
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "database": {"name": "sqlite3", "args": {"database": str(self.dir / "homeserver.db")}},
            "log_config": str(log_config),
            "media_store_path": str(self.dir / "media"),
            "signing_key_path": str(self.dir / "signing.key"),
            "registration_shared_secret": SHARED_SECRET,
            "macaroon_secret_key": "macaroon-test-secret",
            "form_secret": "form-test-secret",
            "report_stats": False,
            "enable_registration": False,
            "default_room_version": self.default_room_version,
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            # Its room directory open to other servers, and publishing open to its users
            # (neither is Synapse's default): the directory tests list it from Sotto.
            "allow_public_rooms_over_federation": True,
            "room_list_publication_rules": [{"action": "allow"}],
            "rc_message": unlimited,
            "rc_registration": unlimited,
            "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
            "rc_joins": {"local": unlimited, "remote": unlimited},
            "rc_joins_per_room": unlimited,
            "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
            "rc_3pid_validation": unlimited,
            "rc_key_requests": unlimited,
            "rc_federation": {
                "window_size": 1000,
                "sleep_limit": 10000,
                "sleep_delay": 0,
                "reject_limit": 10000,
                "concurrent": 100,
            },
            "federation_rr_transactions_per_room_per_second": 10000,
        }
        if self.experimental_features:
            config["experimental_features"] = self.experimental_features
        path = self.dir / "homeserver.yaml"
        # JSON is valid YAML.
        path.write_text(json.dumps(config, indent=1))
        return path

    def start(self) -> None:
        python = ensure_synapse()
        config = self.write_config()
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        subprocess.run(
            [str(python), "-m", "synapse.app.homeserver", "-c", str(config), "--generate-keys"],
            check=True,
            timeout=120,
            capture_output=True,
            cwd=self.dir,
            env=env,
        )
        out = open(self.dir / "stdout.log", "wb")
        self.proc = subprocess.Popen(
            [str(python), "-m", "synapse.app.homeserver", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            env=env,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Synapse exited early:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/_matrix/client/versions", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Synapse did not start in {START_TIMEOUT_S}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def tail(self, lines: int = 60) -> str:
        text = ""
        for name in ("stdout.log", "homeserver.log"):
            p = self.dir / name
            if p.exists():
                text += "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def register(self, localpart: str, password: str = "password", admin: bool = False) -> dict[str, Any]:
        """Register with the shared-secret admin API; returns the login response."""
        url = self.base_url + "/_synapse/admin/v1/register"
        with urllib.request.urlopen(url, timeout=10) as resp:
            nonce = json.loads(resp.read())["nonce"]
        # The MAC covers nonce NUL user NUL password NUL admin-flag.
        parts = (nonce, localpart, password, "admin" if admin else "notadmin")
        mac = hmac.new(SHARED_SECRET.encode(), b"\x00".join(p.encode() for p in parts), hashlib.sha1)
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        req = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
