"""`python -m service serve` (the default command): the HTTP service under uvicorn."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def run(args: argparse.Namespace) -> int:
    import msgspec
    import uvicorn

    from service.app import create_app
    from service.server import check_exposure, server_config
    from service.settings import Settings

    settings = Settings.from_env()
    if args.insecure_no_auth:
        settings = msgspec.structs.replace(settings, allow_no_auth=True)
    host = args.host or settings.host
    check_exposure(settings, host)
    port = args.port or settings.port
    config = server_config(create_app(settings), host=host, port=port, log_level=args.log_level)
    uvicorn.Server(config).run()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the HTTP service (default)")
    serve.add_argument("--host", help="bind address (QASYNTH_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (QASYNTH_PORT, default 8000)")
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve a non-loopback address with no API keys configured (QASYNTH_ALLOW_NO_AUTH=1)",
    )
    serve.set_defaults(func=run)
