"""Echo (or broadcast) server on python `websockets` (asyncio API), for bench/run.sh.

    python3 bench/peers/python_echo.py ADDR [--deflate] [--broadcast]

--deflate: permessage-deflate with websockets' default settings, left as shipped (the
parameters negotiated are in each result's "compression" field). Without it, compression
is off. --broadcast: every message goes to every connected
client (websockets.broadcast). Messages up to 64 MiB.
"""

import asyncio
import sys

import websockets
from websockets.asyncio.server import broadcast, serve


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = {a for a in sys.argv[1:] if a.startswith("--")}
    unknown = flags - {"--deflate", "--broadcast"}
    if unknown:
        sys.exit(f"unknown option {unknown.pop()}")
    host, port = (args[0] if args else "127.0.0.1:9001").rsplit(":", 1)
    compression = "deflate" if "--deflate" in flags else None
    clients = set()

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def relay(ws):
        clients.add(ws)
        try:
            async for message in ws:
                broadcast(clients, message)
        finally:
            clients.discard(ws)

    handler = relay if "--broadcast" in flags else echo

    async def run():
        async with serve(
            handler,
            host,
            int(port),
            compression=compression,
            max_size=64 * 1024 * 1024,
            ping_interval=None,
        ) as server:
            print(f"listening on {host}:{port} (websockets {websockets.__version__})",
                  file=sys.stderr)
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
