"""Helpers shared by the benchmark drivers: free loopback ports, waiting for a
port to open, CPU pinning (load generators on CPU 0, servers on CPU 1), and a
development PKI."""
import json
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


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """The process's CPU time so far (utime + stime), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid):
    """The process's resident set size now (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def idle_kib_per_connection(port, pid, request, reply_end, count=500):
    """RSS growth of `pid` per idle connection: `count` connections to
    `port` that each sent `request` and read its reply (up to `reply_end`),
    then stay open doing nothing; measured after a settling second, then
    closed. One warm-up connection first, so lazily made state is not
    counted."""
    def exchange(sock):
        sock.sendall(request)
        data = b""
        while not data.endswith(reply_end):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"port {port} closed an idle-memory connection")
            data += chunk

    with socket.create_connection(("127.0.0.1", port)) as warm:
        exchange(warm)
    time.sleep(0.5)
    before = rss_kib(pid)
    held = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            held.append(sock)
            exchange(sock)
        time.sleep(1)
        return (rss_kib(pid) - before) / count
    finally:
        for sock in held:
            sock.close()


RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def peak_rss_mib(pid):
    """The process's peak resident set size so far (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def redis_benchmark_rows(out):
    """redis-benchmark's --csv output as {test: [rps, avg, min, p50, p95,
    p99, max]} (latencies in ms)."""
    rows = {}
    for line in out.splitlines():
        fields = [field.strip('"') for field in line.split(",")]
        if len(fields) > 1 and fields[0] != "test":
            rows[fields[0]] = [float(field) for field in fields[1:]]
    return rows


def save_results(scenario, rounds, cases, memory):
    """Writes results/<scenario>.json, which chart.py draws and the sizing
    in docs/operations.md quotes.

    cases:  [{"case": label, "unit": "MiB/s", "baseline": target,
              "values": {target: median}}], higher is better in each;
    memory: {what: MiB} measured from attache's VmHWM / VmRSS, kept to three
            significant digits (a few KiB per connection is 0.00x MiB)."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{scenario}.json")
    rounded = [dict(case, values={name: round(value, 1) for name, value in case["values"].items()})
               for case in cases]
    with open(path, "w") as f:
        json.dump({"scenario": scenario, "rounds": rounds, "date": time.strftime("%Y-%m-%d"),
                   "cases": rounded, "attache_memory_mib": {k: float(f"{v:.3g}") for k, v in memory.items()}},
                  f, indent=2)
        f.write("\n")
    print(f"\nresults written to {os.path.relpath(path)}")
