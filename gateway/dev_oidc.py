"""The demo's dev OpenID provider: devtools/oidc-provider (npm oidc-provider) run with node."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from gateway.config import SessionConfig, SignInConfig
from gateway.signin.session import write_key_file

log = logging.getLogger("portcullis.demo")
PROVIDER_DIR = Path(__file__).resolve().parent.parent / "devtools" / "oidc-provider"
CLIENT_ID = "portcullis-demo"
SCOPES = ("openid", "email", "profile", "groups")


@dataclass
class DevProvider:
    url: str
    client_secret: str
    process: asyncio.subprocess.Process
    drain: asyncio.Task[None] | None = None  # keeps reading its output (held: not GC'd)

    def sign_in(self) -> SignInConfig:
        return SignInConfig(self.url, CLIENT_ID, self.client_secret, SCOPES)

    async def stop(self) -> None:
        if self.drain is not None:
            self.drain.cancel()
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()


def unavailable() -> str | None:
    """Why the dev provider can't run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        return f"{PROVIDER_DIR}/node_modules is missing (`make demo` installs it)"
    return None


def session_config(state_dir: Path) -> SessionConfig:
    key = state_dir / "session.key"
    if not key.exists():
        write_key_file(key)
    return SessionConfig(key_files=(key,))


async def start_dev_provider(state_dir: Path, port: int, gateway_urls: list[str]) -> DevProvider:
    """Start the provider on 127.0.0.1 with one confidential client whose callbacks
    are the gateway's (each URL a browser may use for it: 127.0.0.1 and localhost)."""
    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    secret = secrets.token_urlsafe(24)
    config = {
        "issuer": url,
        "clients": [
            {
                "client_id": CLIENT_ID,
                "client_secret": secret,
                "redirect_uris": [f"{g}/.portcullis/callback" for g in gateway_urls],
                "post_logout_redirect_uris": [f"{g}/.portcullis/signed_out" for g in gateway_urls],
                # Served when the demo runs with Redis (shared_state).
                "backchannel_logout_uri": f"{gateway_urls[0]}/.portcullis/backchannel_logout",
                "backchannel_logout_session_required": True,
            }
        ],
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    config_file = state_dir / "oidc-provider.json"
    config_file.touch(mode=0o600)
    config_file.write_text(json.dumps(config, indent=2))
    process = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        "server.js",
        "--config",
        str(config_file.resolve()),
        cwd=PROVIDER_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = []
    try:
        async with asyncio.timeout(20):
            while line := (await process.stdout.readline()).decode(errors="replace"):
                output.append(line)
                if line.startswith("listening "):
                    break
    except TimeoutError:
        pass
    if not output or not output[-1].startswith("listening "):
        process.kill()
        raise OSError("the dev OpenID provider did not start:\n" + "".join(output))

    async def drain() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            log.debug("oidc-provider: %s", line.decode(errors="replace").rstrip())

    return DevProvider(url, secret, process, asyncio.ensure_future(drain()))
