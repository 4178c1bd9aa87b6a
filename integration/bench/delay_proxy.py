#!/usr/bin/env python3
"""A fault injector for benchmarks: forwards TCP connections from a local
port to a target, delaying every chunk by a fixed time in each direction, so
loopback behaves like a network with a round-trip time (cross-zone: ~1 ms).
A new connection's first bytes towards the target also wait one round trip
more: the TCP handshake a real network would have made the client wait
for. No kernel netem is needed.

    delay_proxy.py LISTEN_PORT TARGET_PORT ONE_WAY_MS
"""
import asyncio, socket, sys


async def pump(reader, writer, delay, handshake=0.0):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def forward():
        await asyncio.sleep(handshake)
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(forward())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
        writer.close()


async def main():
    listen, target, one_way_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    delay = one_way_ms / 1000

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        for writer in (client_writer, server_writer):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pump(client_reader, server_writer, delay, handshake=2 * delay),
                             pump(server_reader, client_writer, delay),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", listen, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
