"""How a service process lives: HTTP surface (health, readiness, metrics), signals, shutdown.

Every app is guarded by the access policy (access.py): anything that changes something needs
the admin token, and the read-only views and metrics can be locked too.

A service implements ``Service``; ``run_service`` serves its HTTP app with uvicorn in the same
event loop, runs it until SIGTERM or SIGINT, then stops it cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import uvicorn
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from switchboard.shared import metrics
from switchboard.shared.access import AccessGuard, AccessPolicy
from switchboard.shared.logs import configure_logging
from switchboard.shared.settings import ServiceSettings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)


class Service(Protocol):
    name: str

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def run(self, stop: asyncio.Event) -> None: ...

    async def close(self) -> None: ...


def http_app(service: Service, access: AccessPolicy) -> FastAPI:
    """``/healthz`` (the process is alive), ``/readyz`` (it can process), ``/metrics``; every
    route, these and those a service adds, behind ``access``."""
    app = FastAPI(
        title=f"switchboard {service.name}", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.add_middleware(AccessGuard, policy=access)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service.name}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        """Ready or not; a service with ``readiness_detail()`` adds how its parts are doing
        (ingest: each source's state), which does not change the status code."""
        detail = getattr(service, "readiness_detail", None)
        extra: dict[str, object] = detail() if detail is not None else {}
        if not service.ready:
            response.status_code = 503
            return {"status": "starting", "service": service.name} | extra
        return {"status": "ready", "service": service.name} | extra

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:  # served at /metrics itself, no redirect
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def service_app(service: Service, settings: ServiceSettings) -> FastAPI:
    """The HTTP app a service serves: its own (``http_app()``, built on ``http_app(service,
    access)``), else health, readiness and metrics under the configured access policy."""
    own_app = getattr(service, "http_app", None)
    if own_app is not None:
        return own_app()
    return http_app(service, AccessPolicy.of(settings.config.access))


def track_readiness(service: Service) -> None:
    """``switchboard_ready`` read at each scrape, as /readyz answers: 0 while the service starts
    (the broker, the model, its tables restoring) and whenever it stops being ready (a
    rebalance), not only once it has stopped."""
    metrics.READY.labels(service.name).set_function(lambda: float(service.ready))


async def until_stopped(starting: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Await ``starting`` unless ``stop`` is set first; then cancel it and say so (False).

    A start may take long (the model loading, a table restoring; the stack's services one
    after another): Ctrl-C or SIGTERM in that time must stop at once, not once it is up."""
    start = asyncio.ensure_future(starting)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not start.done():
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
    if start.cancelled():
        return False
    start.result()  # a start that failed raises here
    return True


async def run_service(make_service: Callable[[S], Service], settings: S) -> None:
    """Build the service inside the event loop (Kafka clients need one) and run it.

    A service with an ``http_app()`` method serves that app (built on ``http_app(service,
    access)``); the others serve health, readiness and metrics.
    """
    service = make_service(settings)
    app = service_app(service, settings)
    configure_logging(service.name, settings.log_level, settings.log_format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.port,
            log_level="warning",
            log_config=None,  # uvicorn logs through our handler: JSON, secrets masked
            lifespan="off",
        )
    )
    server.install_signal_handlers = lambda: None  # we own the signals
    http = asyncio.create_task(server.serve(), name="http")
    track_readiness(service)
    try:
        if not await until_stopped(service.start(), stop):
            log.info("stopped while starting")  # a table restoring: closed below, at once
            return
        log.info("started", extra={"http_port": settings.port})
        work = asyncio.create_task(service.run(stop), name="work")
        stopped = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait({work, stopped, http}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        if work in done:
            work.result()  # re-raise a crash of the work loop
        else:
            await asyncio.wait_for(work, timeout=10)
    finally:
        metrics.READY.labels(service.name).set_function(lambda: 0.0)
        await service.close()
        server.should_exit = True
        await http
        log.info("stopped")


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None once it is larger than ``limit`` bytes: refused on its
    declared length before any byte is read, else as soon as the bytes read pass it (a
    webhook open to the internet must not hold what a sender chooses to send)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
