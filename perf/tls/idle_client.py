#!/usr/bin/env python3
"""Opens N idle TLS HTTP/1.1 `GET /events` streams (spread over 127.0.0.1-16), waits for each
response head, holds them HOLD seconds, and prints how many opened. Bounded in count and time."""
import asyncio, ssl, sys, time

host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
opened = 0

async def one(i, sem):
    global opened
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx, local_addr=(f"127.0.0.{1 + i % 16}", 0)), 10)
            w.write(b"GET /events?topic=idle HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            if b" 200 " in head.split(b"\r\n")[0]:
                opened += 1
        except Exception as e:
            print("error", type(e).__name__, e, file=sys.stderr)
            return None
    return (r, w)

async def main():
    sem = asyncio.Semaphore(200)
    t = time.time()
    conns = await asyncio.gather(*(one(i, sem) for i in range(n)))
    print(f"opened {opened}/{n} in {time.time() - t:.2f} s", flush=True)
    await asyncio.sleep(hold)
    for c in conns:
        if c:
            c[1].close()

asyncio.run(main())
