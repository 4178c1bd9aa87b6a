#!/usr/bin/env python3
"""Drives the warm-pool benchmark (see warm.sh and docs/benchmarks.md).

Upstreams: a private redis-server (plain) and a private redis-server with
TLS only, requiring client certificates. Targets, each a route to one of them:
- direct: the client speaks to the server itself (TLS, with its own client
  certificate, for the TLS server);
- attache, no warm pool / warm pool (size 32): plain to attache, attache
  connects (and, to the TLS server, originates mutual TLS);
- HAProxy (mode tcp, `server ... ssl` for origination): a peer without a
  warm pool.
Measures, alternated per round:
- conn/s: redis-benchmark -k 0 -c 8 (a new connection per PING);
- time to first byte: one client, sequentially, connect + PING + first byte
  of the answer, 2000 times; median and p99.
Load generators run on CPU 0; proxies and servers on CPU 1.
"""
import argparse, os, shutil, socket, ssl, statistics, subprocess, sys, tempfile, time

from bench_support import LOAD_CPU, SERVER_CPU, free_port, pinned, stop, wait_port

CONNECTIONS = 20000
TTFB_SAMPLES = 2000


def server(argv):
    return pinned(SERVER_CPU, argv, stdout=subprocess.DEVNULL)


def conn_rate(port, tls_args):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "redis-benchmark", "-p", str(port), "-t", "ping_mbulk",
                          "-n", str(CONNECTIONS), "-c", "8", "-k", "0", "--csv", *tls_args],
                         capture_output=True, text=True, check=True).stdout
    row = [line for line in out.splitlines() if "PING_MBULK" in line][0]
    return float(row.split(",")[1].strip('"'))


def ttfb(port, context):
    """Median and p99 (µs) of connect + PING + first answer byte."""
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    samples = []
    for _ in range(TTFB_SAMPLES):
        started = time.perf_counter()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(b"PING\r\n")
        first = sock.recv(1)
        samples.append((time.perf_counter() - started) * 1e6)
        if first != b"+":
            raise RuntimeError(f"port {port}: unexpected answer {first!r}")
        sock.close()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--attache", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="attache-warm-bench-")
    pki = os.path.join(work, "pki")
    run = lambda *a: subprocess.run([args.attache, *a], check=True, capture_output=True)
    run("certs", "ca", "--out", pki)
    run("certs", "issue", "--ca", pki, "--out", pki, "--name", "server", "--dns", "localhost", "--ip", "127.0.0.1")
    run("certs", "issue", "--ca", pki, "--out", pki, "--name", "app", "--uri", "spiffe://bench/app")
    with open(f"{pki}/app.pem", "w") as f:
        f.write(open(f"{pki}/app.crt").read() + open(f"{pki}/app.key").read())
    client_tls = ssl.create_default_context(cafile=f"{pki}/ca.crt")
    client_tls.load_cert_chain(f"{pki}/app.crt", f"{pki}/app.key")
    redis_tls_args = ["--tls", "--cacert", f"{pki}/ca.crt", "--cert", f"{pki}/app.crt", "--key", f"{pki}/app.key",
                      "--sni", "localhost"]

    procs = []
    try:
        plain, tls = free_port(), free_port()
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--maxclients", "10000"]
        procs.append(server(["redis-server", "--port", str(plain), *common]))
        procs.append(server(["redis-server", "--port", "0", "--tls-port", str(tls), "--tls-cert-file", f"{pki}/server.crt",
                             "--tls-key-file", f"{pki}/server.key", "--tls-ca-cert-file", f"{pki}/ca.crt",
                             "--tls-auth-clients", "yes", *common]))
        ports = {name: free_port() for name in ("cold", "warm", "cold_tls", "warm_tls", "haproxy", "haproxy_tls")}
        origination = f"tls: {{ca: {pki}/ca.crt, cert: {pki}/app.crt, key: {pki}/app.key, server_name: localhost}}"
        warm = "warm_pool: {size: 32, max_age: 60s}"
        with open(f"{work}/attache.yaml", "w") as f:
            f.write("log: {level: warn}\nadmin: {listen: \"off\"}\nlisteners:\n")
            for name in ("cold", "warm", "cold_tls", "warm_tls"):
                f.write(f"  - {{name: {name}, listen: \"127.0.0.1:{ports[name]}\", protocol: tcp, upstream: {name}, max_connections: 20000}}\n")
            f.write("upstreams:\n"
                    f"  cold: {{endpoints: [\"127.0.0.1:{plain}\"]}}\n"
                    f"  warm: {{endpoints: [\"127.0.0.1:{plain}\"], {warm}}}\n"
                    f"  cold_tls: {{endpoints: [\"127.0.0.1:{tls}\"], {origination}}}\n"
                    f"  warm_tls: {{endpoints: [\"127.0.0.1:{tls}\"], {origination}, {warm}}}\n")
        with open(f"{work}/haproxy.cfg", "w") as f:
            f.write(f"global\n  nbthread 1\n  maxconn 20000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n"
                    f"  timeout server 1h\nlisten plain\n  bind 127.0.0.1:{ports['haproxy']}\n  server s1 127.0.0.1:{plain}\n"
                    f"listen tls\n  bind 127.0.0.1:{ports['haproxy_tls']}\n"
                    f"  server s1 127.0.0.1:{tls} ssl crt {pki}/app.pem ca-file {pki}/ca.crt verify required sni str(localhost)\n")
        procs.append(server([args.attache, "run", "-c", f"{work}/attache.yaml"]))
        procs.append(server(["haproxy", "-f", f"{work}/haproxy.cfg", "-db"]))
        for port in (plain, tls, *ports.values()):
            wait_port(port)

        # name: (port, client TLS context for TTFB, redis-benchmark TLS arguments)
        targets = {
            "direct": (plain, None, []),
            "attache": (ports["cold"], None, []),
            "attache + warm pool": (ports["warm"], None, []),
            "HAProxy": (ports["haproxy"], None, []),
            "direct TLS": (tls, client_tls, redis_tls_args),
            "attache TLS origination": (ports["cold_tls"], None, []),
            "attache TLS origination + warm pool": (ports["warm_tls"], None, []),
            "HAProxy TLS origination": (ports["haproxy_tls"], None, []),
        }
        results = {name: {"rate": [], "p50": [], "p99": []} for name in targets}
        for round_number in range(args.rounds):
            for name, (port, context, tls_args) in targets.items():
                results[name]["rate"].append(conn_rate(port, tls_args))
                time.sleep(1)  # let warm pools refill between runs
                p50, p99 = ttfb(port, context)
                results[name]["p50"].append(p50)
                results[name]["p99"].append(p99)
                print(f"round {round_number + 1} {name}: {results[name]['rate'][-1]:.0f} conn/s, "
                      f"TTFB p50 {p50:.0f} µs p99 {p99:.0f} µs", file=sys.stderr)
                time.sleep(1)

        median = {name: {key: statistics.median(values) for key, values in result.items()}
                  for name, result in results.items()}
        print(f"\nrounds: {args.rounds}; medians; load on CPU {LOAD_CPU}, proxies + servers on CPU {SERVER_CPU}\n")
        print("| target | conn/s | vs direct | TTFB p50 µs | vs direct | TTFB p99 µs |")
        print("|---|---|---|---|---|---|")
        for name, values in median.items():
            base = median["direct TLS" if "TLS" in name else "direct"]
            print(f"| {name} | {values['rate']:.0f} | {values['rate'] / base['rate']:.2f}x "
                  f"| {values['p50']:.0f} | {values['p50'] / base['p50']:.2f}x | {values['p99']:.0f} |")
        print("\n(TLS rows compare with direct TLS: the app doing its own mutual TLS to the server.)")
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
