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
    help="Join the Dask cluster at this scheduler (tcp://HOST:PORT, or tls://HOST:PORT "
    "with distributed.comm.tls.* set) instead of starting one.",
)
@click.option("--workers", type=int, default=None, help="Workers of the embedded cluster.")
@click.option(
    "--dashboard",
    default=":8787",
    help="Dashboard address of the embedded cluster; a bare :PORT listens on 127.0.0.1.",
)
@click.option("--no-demo", is_flag=True, help="Do not import the bundled demo model on start.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Serve on a non-loopback address without authentication (anyone who reaches "
    "the port may create, overwrite and delete models).",
)
def serve(
    host: str | None,
    port: int | None,
    scheduler: str | None,
    workers: int | None,
    dashboard: str,
    no_demo: bool,
    insecure: bool,
) -> None:
    """Serve the Ollama and OpenAI APIs.

    With no --scheduler, start an embedded Dask cluster with the omax plugins (one
    worker per GPU; with none, one worker whose inference slot is the CPU).

    On an address other than loopback, authentication must be on (docs/security.md)
    unless --insecure is given.
    """
    from omax.auth.policy import auth_config

    cfg = settings()
    host = host or cfg.host
    open_door = not auth_config(cfg).enabled and not is_loopback(host)
    if open_door and not insecure:
        raise click.ClickException(
            f"refusing to serve on {host} without authentication: anyone who reaches it "
            "could create, overwrite and delete models. Set omax.auth.jwt-secret or "
            "omax.auth.required with keys from `omax key create` (docs/security.md), "
            "listen on 127.0.0.1, or pass --insecure to accept the risk."
        )
    if open_door:
        logger.warning("serving on %s WITHOUT authentication (--insecure)", host)
    asyncio.run(
        _serve(
            host,
            cfg.port if port is None else port,
            scheduler,
            workers,
            dashboard,
            demo=not no_demo,
        )
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (only this machine can connect)."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _serve(
    host: str, port: int, scheduler: str | None, workers: int | None, dashboard: str, demo: bool
) -> None:
    import uvicorn

    from omax.serve.app import build_app
    from omax.serve.bounds import Bounds
    from omax.serve.cluster import ClusterRuntime

    cfg = settings()
    cluster = None
    if scheduler is None:
        from omax.embedded import start_cluster

        cluster = await start_cluster(workers, dashboard)
        scheduler = cluster.scheduler_address
    runtime = await ClusterRuntime.connect(scheduler)
    try:
        if demo:
            await _ensure_demo(runtime)
        from omax.auth.policy import auth_config

        app = build_app(
            runtime,
            max_body_bytes=cfg.max_body,
            auth=auth_config(cfg),
            bounds=Bounds.configured(),
            origins=cfg.origins,
            check_host=is_loopback(host),
        )
        config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off")
        server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        logger.info("omax serving on http://%s:%d (scheduler %s)", host, port, scheduler)
        from omax import warmup

        warmup.start(warmup.importer_imports)  # for the first create or pull
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
