"""The `memalign-mcp` command line: `serve` runs the MCP server over stdio or streamable HTTP; `maintain` tidies the store.

This module owns argument parsing, logging set-up and exit codes: settings come from the config file, then
MEMALIGN_* variables, then flags, and a bad setting prints its message to stderr and exits 2. It must never
write to stdout while serving over stdio (the protocol owns it), and it imports the MCP face only once the
arguments are known, so `--help` and bad settings answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from memalign_mcp import __version__
from memalign_mcp.errors import SettingsError
from memalign_mcp.settings import Settings, load_settings

EXIT_OK = 0
EXIT_MAINTENANCE_FAILED = 1  # `maintain`: a step failed (the others ran; see the report)
EXIT_BAD_SETTING = 2
EXIT_NOT_MAINTAINED = 3  # `maintain`: another maintainer holds the lease, or a purge runs: run again later
EXIT_INTERRUPTED = 130
Command = Callable[[argparse.Namespace, Settings], int]


def _add_settings_flags(parser: argparse.ArgumentParser, *, log_level: str = "INFO") -> None:
    """The flags every subcommand shares: where settings and the store are, and how much to log."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=(
            "TOML settings laid over the packaged defaults (default: $MEMALIGN_CONFIG, else "
            "$XDG_CONFIG_HOME/memalign-mcp/config.toml when it exists)"
        ),
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="directory of the LanceDB store, or s3://bucket/prefix (MEMALIGN_DATA_DIR)",
    )
    parser.add_argument(
        "--log-level",
        default=log_level,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help=f"level of the log written to stderr (default: {log_level})",
    )


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the MCP server until the client disconnects (stdio) or the process is stopped (http)."""
    from memalign_mcp.app import build_server  # loads the MCP SDK; not needed for --help or a bad setting
    from memalign_mcp.auth import http_auth

    srv = settings.server
    auth = http_auth(srv) if srv.transport == "http" else None
    server = build_server(settings, log_level=args.log_level, auth=auth)
    if srv.transport == "stdio":
        server.run("stdio")
    else:
        log = logging.getLogger(__name__)
        log.info("serving MCP on http://%s:%d/mcp", srv.host, srv.port)
        if auth is None:
            log.warning("no tokens file: every HTTP caller gets scopes %s", ", ".join(srv.stdio_scopes))
        else:
            log.info("bearer tokens required; callers: %s", ", ".join(auth.verifier.names))
        from memalign_mcp.http_serving import serve_http

        serve_http(server, srv, max_body_bytes=settings.limits.max_request_bytes)
    return EXIT_OK


def _add_serve(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the MCP server",
        description="Serve the judges over MCP: stdio by default, or streamable HTTP at http://HOST:PORT/mcp.",
    )
    parser.add_argument(
        "--transport", choices=["stdio", "http"], default=None, help="how clients connect (default: stdio)"
    )
    parser.add_argument("--host", default=None, help="address to listen on over http (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on over http (default: 8000)")
    parser.add_argument(
        "--tokens",
        metavar="FILE",
        default=None,
        help="TOML file of bearer tokens and their scopes; http then needs a token (MEMALIGN_TOKENS_FILE)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="allow http on a non-loopback host without --tokens: every caller gets every scope",
    )
    _add_settings_flags(parser)
    parser.set_defaults(command=_serve)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    """Run the seed workflow through a real MCP client against `serve` in a subprocess."""
    from pathlib import Path

    from memalign_mcp.demo import DemoOptions
    from memalign_mcp.demo import main as demo_main
    from memalign_mcp.settings import chosen_config_file, is_remote

    chosen = chosen_config_file(args.config, os.environ)
    data_dir: Path | str | None = args.data_dir
    if args.data_dir and not is_remote(args.data_dir):
        data_dir = Path(args.data_dir).expanduser()
    options = DemoOptions(
        config=chosen[1] if chosen else None,
        data_dir=data_dir,
        log_level=args.log_level,
    )
    return demo_main(settings, options)


def _add_demo(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run the seed workflow through an MCP client",
        description=(
            "Create the helpfulness judge, score a baseline, add feedback, show guidelines, score again, "
            "remove the 'sweater' feedback and score again, all through an MCP client talking to "
            "`memalign-mcp serve` over stdio, in a temporary store unless --data-dir is given. Uses the "
            "configured model (MEMALIGN_MODEL or the config file) when set."
        ),
    )
    _add_settings_flags(parser, log_level="WARNING")
    parser.set_defaults(command=_demo)


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    """Score a labelled set or the judge's own feedback, print Markdown, write JSON, Markdown and PNG."""
    from pathlib import Path

    from memalign_mcp.eval_command import run_eval

    return run_eval(
        settings,
        args.judge,
        Path(args.dataset) if args.dataset else None,
        limit=args.limit,
        compare_baseline=args.compare_baseline,
        out=Path(args.out),
    )


def _add_eval(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "eval",
        help="measure a judge's agreement with human verdicts",
        description=(
            "Score a JSONL file of {inputs, outputs, value} items, or (without --dataset) the judge's own "
            "feedback leave-one-out, and report agreement: accuracy, Cohen's kappa, confusion matrix (or MAE, "
            "Spearman, Lin's CCC for numbers) with a 95% bootstrap interval."
        ),
    )
    parser.add_argument("--judge", required=True, help="the judge to evaluate")
    parser.add_argument("--dataset", metavar="FILE", default=None, help="JSONL of {inputs, outputs, value}")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items of the dataset")
    parser.add_argument(
        "--compare-baseline", action="store_true", help="also score with memory switched off, side by side"
    )
    parser.add_argument("--out", metavar="DIR", default="reports", help="where to write the report files")
    _add_settings_flags(parser)
    parser.set_defaults(command=_eval)


def _maintain(args: argparse.Namespace, settings: Settings) -> int:
    """Run the maintenance steps once, unless another process is maintaining the store."""
    import json
    from datetime import timedelta
    from pathlib import Path

    from memalign_mcp.engine import open_store  # lancedb: only once the arguments are read
    from memalign_mcp.errors import MemAlignError
    from memalign_mcp.maintenance import Maintainer

    uri = settings.store.resolved_uri()
    if "://" not in uri and not Path(uri).is_dir():
        raise SettingsError(
            "store.data_dir", str(Path(uri).parent), "the data directory of an existing store (--data-dir)"
        )
    try:
        store = open_store(settings, any_embedding=True)  # maintenance embeds nothing
    except MemAlignError as exc:
        print(f"memalign-mcp: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    report = Maintainer(store, keep=timedelta(seconds=settings.store.keep_versions_s)).run()
    print(json.dumps(report.as_dict()) if args.json else report.text())
    if report.outcome in ("lease_held", "purge_running", "lease_lost"):
        return EXIT_NOT_MAINTAINED
    return EXIT_OK if report.outcome == "done" else EXIT_MAINTENANCE_FAILED


def _add_maintain(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "maintain",
        help="compact the store, refresh its indexes and prune old versions",
        description=(
            "Maintain the store once: compact small fragments, build or refresh the scalar indexes, prune "
            "versions superseded more than [store] keep_versions_s ago. Safe beside running servers; one "
            "process maintains at a time. Exit status: 0 done, 1 a step failed (the others ran), 2 bad "
            "setting, 3 not done because another maintainer holds the lease or a purge is running (run again "
            "later). For cron, with [store] maintain_interval_s = 0 in the servers' config."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    _add_settings_flags(parser, log_level="WARNING")
    parser.set_defaults(command=_maintain)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted settings keys from the flags that were given; absent flags leave file and environment alone."""
    return {
        "store.data_dir": getattr(args, "data_dir", None),
        "server.transport": getattr(args, "transport", None),
        "server.host": getattr(args, "host", None),
        "server.port": getattr(args, "port", None),
        "server.tokens_file": getattr(args, "tokens", None),
        "server.insecure_no_auth": getattr(args, "insecure_no_auth", None),
    }


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="memalign-mcp",
        description="LLM judges that learn from human feedback and forget it exactly, served over MCP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_serve(commands)
    _add_demo(commands)
    _add_eval(commands)
    _add_maintain(commands)
    return parser


def configure_logging(level: str) -> None:
    """Send every log record to stderr: over stdio, stdout carries the protocol and nothing else."""
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    # Before numpy loads: our products are small, and idle OpenBLAS threads spinning after one of them slow
    # the embedder and LanceDB on a 2-core machine more than threading saves (measured in benchmarks/).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    command: Command = args.command
    try:
        return command(args, load_settings(args.config, overrides=_overrides(args)))
    except SettingsError as exc:
        print(f"memalign-mcp: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # `python -m memalign_mcp.cli`, as the demo spawns the server
    sys.exit(main())
