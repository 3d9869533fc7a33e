"""`casstore serve-metrics`: expose casstore's prometheus metrics over HTTP (see casstore/observability.py)."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import click

from casstore import observability
from casstore_cli.app import App, fail, with_repo_option

pass_app = click.make_pass_decorator(App)
log = logging.getLogger("casstore")


def register(cli: click.Group) -> None:
    cli.add_command(with_repo_option(serve_metrics))


@click.command("serve-metrics")
@click.option("--port", type=click.IntRange(0, 65535), default=9464, show_default=True,
              help="Port of the /metrics endpoint (0 picks a free one).")
@click.option("--addr", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--watch", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Every SECONDS, sync the repository and export its stats as casstore_repository_* gauges.")
@pass_app
def serve_metrics(app: App, port: int, addr: str, watch: float | None) -> None:
    """Serve casstore metrics for Prometheus until interrupted.

    A host application that already serves /metrics does not need this: it calls
    casstore.observability.enable_metrics() (optionally with its own registry).
    """
    try:
        import prometheus_client
    except ImportError:
        raise fail("serve-metrics needs prometheus-client: pip install 'casstore[metrics]'") from None
    observability.enable_metrics()
    store = app.store() if watch else None
    started = prometheus_client.start_http_server(port, addr=addr)
    server = started[0] if isinstance(started, tuple) else None
    bound = server.server_address[1] if server is not None else port
    click.echo(f"serving casstore metrics on http://{addr}:{bound}/metrics", err=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            if store is not None:
                try:
                    observability.watch_stats(store)
                except Exception as e:  # noqa: BLE001 - keep serving; the failure is logged
                    log.warning("serve-metrics: stats of %s failed: %s: %s", store.url, type(e).__name__, e)
            stop.wait(watch or 3600)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.shutdown()
    sys.stderr.flush()
