"""moto's server on a listening socket handed over by the embedded cloud (``--fd``).

``python -m moto.server`` binds a host and port itself, which cannot confine it to the project's
network (relion_spot.local.listen); this serves moto's own application, with moto's own request
handler, on a socket the parent made and passed down.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relion_spot.local.moto_serve")
    parser.add_argument("--fd", type=int, required=True, help="an inherited listening socket")
    args = parser.parse_args(argv)
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    with socket.socket(fileno=os.dup(args.fd)) as inherited:
        host, port = inherited.getsockname()[:2]
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        host, port, app, threaded=True, request_handler=MotoRequestHandler, fd=args.fd
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
