"""The one place that speaks HTTP to the service: the API key, errors read from the API's error shape, and event
streams followed to their end across reconnections (``Last-Event-ID``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from trainserve.errors import UnreachableError, WaitTimeoutError, error_from_response

# A dropped event stream is reconnected this many times in a row before the client gives up.
STREAM_ATTEMPTS = 30


class Transport:
    """An HTTP connection pool to one service, with its API key; open until ``close()``."""

    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response to one request; a ServiceError for a status of 400 or more, UnreachableError when the
        service cannot be reached."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise UnreachableError(f"cannot reach TrainServe at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def download(self, path: str, write: Callable[[bytes], None]) -> httpx.Headers:
        """Stream a response's body to ``write``, chunk by chunk; its headers."""
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                for chunk in response.iter_bytes():
                    write(chunk)
                return response.headers
        except httpx.TransportError as exc:
            raise UnreachableError(f"cannot reach TrainServe at {self.url}: {exc}") from exc

    def follow(
        self,
        path: str,
        what: str,
        ends: Callable[[str, dict[str, Any]], bool],
        deadline: float | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """An event stream's (event, data) pairs until one ``ends`` it, reconnecting with ``Last-Event-ID`` when
        the stream drops or the service ends it first (streams last at most TRAINSERVE_EVENT_STREAM_MAX_SECONDS).
        ``deadline`` (a ``time.monotonic()``) raises WaitTimeoutError once passed."""
        last_id: str | None = None
        attempt = 0
        while attempt < STREAM_ATTEMPTS:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            timeout = httpx.Timeout(self.timeout)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeoutError(f"{what} has not ended yet")
                timeout = httpx.Timeout(self.timeout, read=min(self.timeout, left))
            try:
                with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise error_from_response(response)
                    event, data, event_id = "", "", None
                    for line in response.iter_lines():
                        if line == "":
                            if event:
                                last_id = event_id or last_id
                                payload = json.loads(data)
                                yield event, payload
                                if ends(event, payload):
                                    return
                            event, data, event_id = "", "", None
                            if deadline is not None and time.monotonic() >= deadline:
                                raise WaitTimeoutError(f"{what} has not ended yet")
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data += line[5:].strip()
                        elif line.startswith("id:"):
                            event_id = line[3:].strip()
                attempt = 0  # the service ended the stream before the end: go on at once
            except httpx.ReadTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeoutError(f"{what} has not ended yet") from None
                attempt += 1
            except (httpx.TransportError, httpx.StreamError):
                attempt += 1
                time.sleep(min(0.5 * attempt, 5))
        raise UnreachableError(f"lost the event stream of {what}")
