"""The build's only way out: a TCP listener on the container's loopback whose every connection is joined
to the agent's package-index proxy through a Unix socket mounted into the container. The container has
no network of its own (`--network none`), so pip, pointed at this listener as its proxy, reaches exactly
what the agent's proxy lets through: the stack's package index.

build_env.py runs it in a thread of its own process (listen()).
"""

import socket
import sys
import threading

CHUNK = 64 * 1024


def pump(source, sink):
    """Copies one direction until it ends, then half-closes the other side so the peer sees the end."""
    try:
        while True:
            data = source.recv(CHUNK)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve(client, path):
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def listen(port, path, ready):
    """Accepts on 127.0.0.1:`port` for ever, joining each connection to the socket at `path`."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    ready.set()
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, path), daemon=True).start()
