"""Helpers shared by the benchmark drivers: free loopback ports, waiting for a
port to open, and CPU pinning (load generators on CPU 0, servers on CPU 1)."""
import socket
import subprocess
import time

LOAD_CPU, SERVER_CPU = "0", "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def pinned(cpu, argv, **kw):
    """Starts argv pinned to `cpu`."""
    return subprocess.Popen(["taskset", "-c", cpu] + argv, **kw)
