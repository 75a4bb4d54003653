"""A fault relay standing in for a load balancer between clients and ssegate: it forwards TCP
both ways, can cut every connection on demand, and cuts any connection idle (no byte either
way) for longer than `idle_timeout` seconds, as load balancers do."""

import asyncio
import socket
import threading
import time


class Relay:
    def __init__(self, target_port, idle_timeout=None):
        self.target_port = target_port
        self.idle_timeout = idle_timeout
        self.connections = set()
        self.cut_for_idle = 0
        self.loop = asyncio.new_event_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self.sock = sock
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, sock=self.sock))
        if self.idle_timeout:
            self.loop.create_task(self._reaper())
        self.loop.run_forever()

    async def _serve(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        conn = {"last": time.monotonic(), "writers": (writer, up_writer)}
        self.connections.add(id(conn))
        conn_key = id(conn)
        self._conns = getattr(self, "_conns", {})
        self._conns[conn_key] = conn

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    conn["last"] = time.monotonic()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                for w in conn["writers"]:
                    w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.connections.discard(conn_key)
        self._conns.pop(conn_key, None)

    async def _reaper(self):
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for conn in list(getattr(self, "_conns", {}).values()):
                if now - conn["last"] > self.idle_timeout:
                    self.cut_for_idle += 1
                    for w in conn["writers"]:
                        w.transport.abort()

    def cut_all(self):
        """Cuts every open connection (both sides), as a load balancer failing over would."""
        def cut():
            for conn in list(getattr(self, "_conns", {}).values()):
                for w in conn["writers"]:
                    w.transport.abort()
        self.loop.call_soon_threadsafe(cut)

    def close(self):
        async def shutdown():
            for conn in list(getattr(self, "_conns", {}).values()):
                for w in conn["writers"]:
                    w.transport.abort()
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        self.thread.join(5)
