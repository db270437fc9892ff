"""The fake API's control surface over HTTP, and the churn thread.

``POST /_control/<action>`` with a JSON object body and the same bearer
token the GraphQL route takes. Actions: ``add_registration``,
``change_registration``, ``cancel_registration``, ``add_order``,
``change_order``, ``open_resale``, ``close_resale``, ``edit_event``,
``fault``, ``clear_faults``, ``churn``, ``log``, ``requests``,
``revoke_token`` and ``state`` (also ``GET``). Every answer is JSON; a bad
action or argument is a 400 naming the problem.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from notifier.fake_atleta.dataset import Dataset
from notifier.fake_atleta.faults import parse_fault

if TYPE_CHECKING:
    from notifier.fake_atleta import FakeAtleta

logger = logging.getLogger(__name__)

RATE_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
RATE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([a-z]+))?\s*$")


def parse_rate(text: str | float) -> float:
    """Mutations per second from ``"1/s"``, ``"30/min"``, ``"2/h"`` or a number.

    :raises ValueError: for anything else.
    """
    if isinstance(text, int | float):
        return float(text)
    match = RATE_PATTERN.match(text.lower())
    if match is None or (match.group(2) or "s") not in RATE_UNITS:
        raise ValueError(f"rate must look like '1/s', '30/min' or '2/h', not {text!r}")
    return float(match.group(1)) / RATE_UNITS[match.group(2) or "s"]


class Churn:
    """Random mutations at a set rate on a background thread."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.rng = random.Random(seed)
        self.rate = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, rate: float) -> None:
        """Start (or retune) churn at ``rate`` mutations per second; 0 stops it.

        :raises ValueError: for a negative rate.
        """
        if rate < 0:
            raise ValueError(f"churn rate must not be negative, not {rate!r}")
        self.stop()
        if rate == 0:
            return
        self.rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(rate, self._stop),
            daemon=True,
            name="fake-atleta-churn",
        )
        self._thread.start()

    def _run(self, rate: float, stop: threading.Event) -> None:
        while not stop.wait(1.0 / rate):
            try:
                mutation = self.dataset.churn_step(self.rng)
            except (KeyError, ValueError) as error:
                logger.debug("churn step skipped: %s", error)
                continue
            logger.debug("churn %s %s", mutation.kind, mutation.id)

    def stop(self) -> None:
        """Stop churning and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._thread = None
        self.rate = 0.0


def control_routes(api: FakeAtleta) -> list[Route]:
    """The ``/_control`` routes bound to one fake API."""
    actions = _actions(api)

    async def endpoint(request: Request) -> JSONResponse:
        checked = api.tokens.check(request.headers.get("authorization"))
        if isinstance(checked, tuple):
            return JSONResponse({"error": checked[1]}, status_code=checked[0])
        action = actions.get(request.path_params["action"])
        if action is None:
            return JSONResponse(
                {"error": "unknown action", "actions": sorted(actions)}, status_code=404
            )
        body: Any = {}
        if request.method == "POST":
            raw = await request.body()
            try:
                body = (await request.json()) if raw else {}
            except ValueError:
                return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse(
                {"error": "body must be a JSON object"}, status_code=400
            )
        try:
            return JSONResponse(action(dict(body)))
        except (KeyError, ValueError, TypeError) as error:
            return JSONResponse(
                {"error": f"{type(error).__name__}: {error}"}, status_code=400
            )

    return [Route("/_control/{action}", endpoint, methods=["GET", "POST"])]


def _actions(api: FakeAtleta) -> dict[str, Callable[[dict[str, Any]], Any]]:
    data = api.data

    def fault(body: dict[str, Any]) -> Any:
        if "spec" in body:
            kind, count, params = parse_fault(str(body.pop("spec")))
        else:
            kind, count = body.pop("kind"), body.pop("count", 1)
            params = body
        added = api.faults.inject(kind, count=count, **params)
        return {"fault": added.to_json()}

    def churn(body: dict[str, Any]) -> Any:
        rate = body.get("rate") or 0
        api.start_churn(parse_rate(rate))
        return {"rate": api.churn_rate}

    return {
        "add_registration": lambda b: {
            "id": data.add_registration(b.pop("project"), **b)
        },
        "change_registration": lambda b: _ok(
            data.change_registration, b.pop("id"), **b
        ),
        "cancel_registration": lambda b: _ok(data.cancel_registration, b["id"]),
        "add_order": lambda b: {"id": data.add_order(b.pop("project"), **b)},
        "change_order": lambda b: _ok(data.change_order, b.pop("id"), **b),
        "open_resale": lambda b: {"id": data.open_resale(b.pop("event_id"), **b)},
        "close_resale": lambda b: _ok(data.close_resale, b.pop("id"), **b),
        "edit_event": lambda b: _ok(data.edit_event, b.pop("event_id"), **b),
        "fault": fault,
        "clear_faults": lambda b: _ok(api.faults.clear),
        "churn": churn,
        "log": lambda b: {
            "version": data.version,
            "mutations": [m.to_json() for m in data.log_since(int(b.get("since", 0)))],
        },
        "requests": lambda b: dict(api.requests),
        "revoke_token": lambda b: _ok(api.revoke_token, b["token"]),
        "state": lambda b: api.state(),
    }


def _ok(action: Callable[..., None], *args: Any, **kwargs: Any) -> dict[str, bool]:
    action(*args, **kwargs)
    return {"ok": True}
