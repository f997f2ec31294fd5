"""The ``ferrymq`` command line: ``serve``, ``bench``, and the commands each door's package contributes.

Conventions (docs/cli.md): data goes to stdout, progress and tables for people
to stderr on a terminal; ``-h`` is help; destructive commands ask for
``--yes`` or run dry until ``--execute``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click
import trio

from ..core.errors import FerryError
from .config import DEFAULT_PORTS, ConfigError, load_config
from .logs import setup_logging

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Modules that contribute commands: each has ``register(main: click.Group)``.
# A module that is not part of this build is skipped.
COMMAND_MODULES = ("bench", "admin", "top", "usercli", "storecheck")


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="ferrymq", prog_name="ferrymq")
def main() -> None:
    """FerryMQ: one store, many doors (RocketMQ remoting, Kafka, MQTT, HTTP)."""


def _port_option(door: str) -> Any:
    return click.option(f"--{door}-port", type=click.IntRange(0, 65535), default=None,
                        help=f"{door} door port (default {DEFAULT_PORTS[door]}; 0 = off).")


@main.command(context_settings=CONTEXT)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML configuration file.")
@click.option("--data-dir", help="Where the store lives (default ./ferrymq-data).")
@click.option("--host", help="Address every door listens on (default 0.0.0.0).")
@click.option("--flush", type=click.Choice(["sync", "async"]),
              help="sync: acknowledge after fsync (group commit); async: fsync every 500 ms.")
@click.option("--segment-size", type=click.IntRange(min=4096),
              help="CommitLog segment size in bytes (default 1 GiB).")
@click.option("--retention", "retention_hours", type=click.FloatRange(min=0),
              help="Delete CommitLog segments older than this many hours (default 72).")
@_port_option("namesrv")
@_port_option("remoting")
@_port_option("kafka")
@_port_option("mqtt")
@_port_option("http")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
                                               case_sensitive=False), help="Default WARNING.")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Default text (logfmt).")
@click.option("--namesrv", "namesrv_addr", metavar="HOST:PORT[;HOST:PORT]",
              help="Join a cluster: register with these NameServers (default: the embedded one).")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="Write {\"pid\", \"ports\"} as JSON here once every door listens.")
def serve(config_file: str | None, **flags: Any) -> None:
    """Run the broker with every door that is built, on its standard port."""
    try:
        cfg = load_config(config_file, overrides=flags)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    setup_logging(cfg.log_level, cfg.log_format)
    from .server import run_server

    def ready(bound: dict[str, int]) -> None:
        doors = ", ".join(f"{name} {port}" for name, port in bound.items()) or "no doors"
        click.echo(f"ferrymq: serving {cfg.broker.data_dir} on {cfg.host} ({doors}); "
                   "Ctrl-C stops", err=True)

    try:
        trio.run(lambda: run_server(cfg, on_ready=ready))
    except KeyboardInterrupt:
        pass
    except (OSError, FerryError) as exc:
        click.echo(f"ferrymq: {exc}", err=True)
        sys.exit(1)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        full = f"{__package__}.{name}"
        if importlib.util.find_spec(full) is not None:
            importlib.import_module(full).register(main)


_register_commands()
