"""Helpers shared by the benchmark drivers: free loopback ports, waiting for a
port to open, CPU pinning (load generators on CPU 0, servers on CPU 1), and a
development PKI."""
import os
import socket
import subprocess
import time

LOAD_CPU, SERVER_CPU = "0", "1"


_handed_out = set()


def free_port():
    """A free loopback port, never one handed out before in this run (the
    kernel may offer a just-closed port again before its user binds it)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


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


def stop(procs):
    """Terminates every process started here, killing any that lingers."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def make_pki(attache, work):
    """A CA, a server certificate (localhost, 127.0.0.1) and a client
    certificate (spiffe://bench/app) made with `attache certs` under
    work/pki, plus each leaf's certificate and key in one .pem (HAProxy's
    form). Returns the directory."""
    pki = os.path.join(work, "pki")
    run = lambda *a: subprocess.run([attache, *a], check=True, capture_output=True)
    run("certs", "ca", "--out", pki)
    run("certs", "issue", "--ca", pki, "--out", pki, "--name", "server", "--dns", "localhost", "--ip", "127.0.0.1")
    run("certs", "issue", "--ca", pki, "--out", pki, "--name", "app", "--uri", "spiffe://bench/app")
    for name in ("server", "app"):
        with open(f"{pki}/{name}.pem", "w") as f:
            f.write(open(f"{pki}/{name}.crt").read() + open(f"{pki}/{name}.key").read())
    return pki
