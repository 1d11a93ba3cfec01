"""The OPA-server backend: a real OPA (sidecar or central) over its REST Data API."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opa_client import AsyncOpaClient

from policy_engine.embedded import REF
from policy_engine.errors import EvaluationError, EvaluationTimeout, UndefinedPath, UndefinedResult


def has_credentials(source: str) -> bool:
    """Whether a policy source is an OPA URL carrying ``user:password@``: never
    supported (not sent, and a source is shown as the policy's revision)."""
    if not source.startswith(("http://", "https://")):
        return False
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    return parts.username is not None or parts.password is not None


class OpaServerEngine:
    """Asks an OPA server `POST /v1/data/{path}` for each decision.

    Any transport error, non-200 answer or timeout is an EvaluationError, so a
    gateway in front of an unreachable OPA denies instead of allowing.
    """

    backend = "opa"

    def __init__(self, url: str, *, timeout: float = 0.5, token: str | None = None) -> None:
        parts = urlsplit(url)
        if has_credentials(url):
            raise ValueError(
                f"{parts.scheme}://{parts.hostname}: an OPA URL with credentials "
                "(user:password@) is not supported"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url}: OPA URL must be http(s)://host[:port]")
        self.url = url
        self.timeout = timeout
        self.revision = url
        self._client = AsyncOpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            ssl=parts.scheme == "https",
            token=token,
            retries=0,
            timeout=timeout,
        )
        self._opened = False
        # Decisions on the wire: close() lets them finish (a reload replaces this
        # engine while requests that started with it still wait for its answer).
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def evaluate(self, ref: str, input: Any) -> Any:
        if not REF.match(ref) or ref == "data":
            raise UndefinedPath(f"{ref}: not a reference like data.portcullis.gateway.decision")
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._evaluate(ref, input)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _evaluate(self, ref: str, input: Any) -> Any:
        if not self._opened:
            await self._client._init_session()
            self._opened = True
        package = ref.removeprefix("data.")
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._client.query_rule(input, package)
        except TimeoutError as error:
            raise EvaluationTimeout(
                f"{ref}: OPA at {self.url} gave no answer in {self.timeout * 1000:.0f} ms"
            ) from error
        except aiohttp.ClientResponseError as error:
            raise EvaluationError(f"{ref}: OPA at {self.url} answered {error.status}") from error
        except (aiohttp.ClientError, ValueError) as error:
            raise EvaluationError(f"{ref}: OPA at {self.url} unreachable: {error}") from error
        except RecursionError as error:  # json.loads of an answer nested thousands deep
            raise EvaluationError(
                f"{ref}: OPA at {self.url} sent an answer nested too deeply to read"
            ) from error
        if not isinstance(answer, dict):
            raise EvaluationError(f"{ref}: OPA at {self.url} sent a non-object answer")
        if "result" not in answer:
            raise UndefinedResult(f"{ref}: undefined for this input (OPA)")
        return answer["result"]

    async def close(self) -> None:
        """Close the client once the decisions in flight have their answers (each
        is bounded by the timeout): closing under them would cut their connections
        and deny them."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout + 1):
                await self._idle.wait()
        await self._client.close_connection()
        self._opened = False
