"""``omax serve``: the HTTP front door, on an embedded cluster or an existing one."""

from __future__ import annotations

import asyncio
import logging
import signal

import click

from omax.cli.main import cli
from omax.config import settings

logger = logging.getLogger("omax.serve")


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 11434).")
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDR",
    help="Join the Dask cluster at this scheduler (tcp://HOST:PORT) instead of starting one.",
)
@click.option("--workers", type=int, default=None, help="Workers of the embedded cluster.")
@click.option("--dashboard", default=":8787", help="Dashboard address of the embedded cluster.")
@click.option("--no-demo", is_flag=True, help="Do not import the bundled demo model on start.")
def serve(
    host: str | None,
    port: int | None,
    scheduler: str | None,
    workers: int | None,
    dashboard: str,
    no_demo: bool,
) -> None:
    """Serve the Ollama and OpenAI APIs.

    With no --scheduler, start an embedded Dask cluster with the omax plugins (one
    worker per GPU; with none, one worker whose inference slot is the CPU).
    """
    cfg = settings()
    asyncio.run(
        _serve(
            host or cfg.host,
            cfg.port if port is None else port,
            scheduler,
            workers,
            dashboard,
            demo=not no_demo,
        )
    )


async def _serve(
    host: str, port: int, scheduler: str | None, workers: int | None, dashboard: str, demo: bool
) -> None:
    import uvicorn

    from omax.serve.app import build_app
    from omax.serve.cluster import ClusterRuntime

    cfg = settings()
    cluster = None
    if scheduler is None:
        from omax.embedded import start_cluster

        cluster = await start_cluster(workers, dashboard)
        scheduler = cluster.scheduler_address
    runtime = await ClusterRuntime.connect(
        scheduler, max_queue=cfg.max_queue, coalesce=cfg.stream_coalesce
    )
    try:
        if demo:
            await _ensure_demo(runtime)
        app = build_app(
            runtime,
            max_body_bytes=cfg.max_body,
            api_keys=cfg.api_keys or None,
            jwt_secret=cfg.jwt_secret or None,
        )
        config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off")
        server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        logger.info("omax serving on http://%s:%d (scheduler %s)", host, port, scheduler)
        await server.serve()
    finally:
        logger.info("shutting down")
        await runtime.close()
        if cluster is not None:
            await cluster.close()  # type: ignore[misc]


async def _ensure_demo(runtime) -> None:
    """Import the bundled SmolLM2 as ``smollm2:135m`` if it is installed and missing."""
    from omax.errors import ModelNotFound
    from omax.sharding import bundled

    name = "smollm2:135m"
    try:
        await asyncio.to_thread(runtime.store.resolve, name)
        return
    except ModelNotFound:
        pass
    try:
        path = bundled.smollm2_gguf_path()
    except Exception as e:
        logger.info("no bundled demo model (%s)", e)
        return
    logger.info("importing the bundled demo model %s from %s", name, path)
    await asyncio.to_thread(runtime.store.import_path, path, name)
