"""The demo's Redis: Debian's redis-server on 127.0.0.1, nothing saved to disk."""

from __future__ import annotations

import asyncio
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DevRedis:
    url: str
    process: asyncio.subprocess.Process

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()


def unavailable() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (`make demo` installs Debian's)"
    return None


async def start_dev_redis(state_dir: Path, port: int) -> DevRedis:
    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    state_dir.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        shutil.which("redis-server") or "redis-server",
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(state_dir.resolve()),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while loop.time() < deadline:
        if process.returncode is not None:
            break
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PING\r\n")
            answer = await reader.read(16)
            writer.close()
            if answer.startswith(b"+PONG"):
                return DevRedis(f"redis://127.0.0.1:{port}/0", process)
        except OSError:
            pass
        await asyncio.sleep(0.05)
    if process.returncode is None:
        process.kill()
    raise OSError(f"redis-server did not start on 127.0.0.1:{port}")
