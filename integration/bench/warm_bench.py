#!/usr/bin/env python3
"""Drives the warm-pool benchmark (see warm.sh and docs/benchmarks.md).

Upstreams: a private redis-server (plain) and a private redis-server with
TLS only, requiring client certificates. Each is reached two ways: on
loopback, and through delay_proxy.py adding a round-trip time (default
1 ms, a cross-zone hop) -- the warm pool saves round trips, and loopback
has none to save. Routes to each server:
- direct: the client speaks to the server itself (TLS, with its own client
  certificate, for the TLS server);
- attache without / with a warm pool (size 32): plain to attache, attache
  connects (and, to the TLS server, originates mutual TLS);
- HAProxy (mode tcp, `server ... ssl` for origination): a peer without a
  warm pool.
Measures, alternated per round:
- conn/s on loopback: redis-benchmark -k 0 -c 8 (a new connection per PING);
- time to first byte, on loopback and over the RTT: one client, connect +
  PING + first byte of the answer, 1000 times, one connection every 10 ms
  (an app's pool churning, not a flood); median and p99.
Load generators and the delay proxies run on CPU 0; proxies and servers on
CPU 1.
"""
import argparse, os, shutil, socket, ssl, statistics, subprocess, sys, tempfile, time

from bench_support import (LOAD_CPU, SERVER_CPU, free_port, make_pki, peak_rss_mib, pinned, save_results, stop,
                           wait_port)

CONNECTIONS = 20000
TTFB_SAMPLES = 1000
TTFB_INTERVAL = 0.010
HERE = os.path.dirname(os.path.abspath(__file__))


def server(argv):
    return pinned(SERVER_CPU, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def conn_rate(port, tls_args):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "redis-benchmark", "-p", str(port), "-t", "ping_mbulk",
                          "-n", str(CONNECTIONS), "-c", "8", "-k", "0", "--csv", *tls_args],
                         capture_output=True, text=True, check=True).stdout
    row = [line for line in out.splitlines() if "PING_MBULK" in line][0]
    return float(row.split(",")[1].strip('"'))


def ttfb(port, context):
    """Median and p99 (µs) of connect + PING + first answer byte, paced."""
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    samples = []
    next_start = time.perf_counter()
    for _ in range(TTFB_SAMPLES):
        next_start += TTFB_INTERVAL
        time.sleep(max(0.0, next_start - time.perf_counter()))
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
    parser.add_argument("--rtt-ms", type=float, default=1.0)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="attache-warm-bench-")
    pki = make_pki(args.attache, work)
    client_tls = ssl.create_default_context(cafile=f"{pki}/ca.crt")
    client_tls.load_cert_chain(f"{pki}/app.crt", f"{pki}/app.key")
    redis_tls_args = ["--tls", "--cacert", f"{pki}/ca.crt", "--cert", f"{pki}/app.crt", "--key", f"{pki}/app.key",
                      "--sni", "localhost"]

    procs = []
    try:
        plain, tls, far_plain, far_tls = free_port(), free_port(), free_port(), free_port()
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--maxclients", "10000"]
        procs.append(server(["redis-server", "--port", str(plain), *common]))
        procs.append(server(["redis-server", "--port", "0", "--tls-port", str(tls), "--tls-cert-file", f"{pki}/server.crt",
                             "--tls-key-file", f"{pki}/server.key", "--tls-ca-cert-file", f"{pki}/ca.crt",
                             "--tls-auth-clients", "yes", *common]))
        one_way = str(args.rtt_ms / 2)
        # The delay proxies play the network: they run with the load
        # generator, not on the CPU of the servers and proxies under test.
        for listen, target in ((far_plain, plain), (far_tls, tls)):
            procs.append(pinned(LOAD_CPU, [sys.executable, f"{HERE}/delay_proxy.py", str(listen), str(target), one_way],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in (plain, tls, far_plain, far_tls):
            wait_port(port)

        origination = f"tls: {{ca: {pki}/ca.crt, cert: {pki}/app.crt, key: {pki}/app.key, server_name: localhost}}"
        warm = "warm_pool: {size: 32, max_age: 60s}"
        # (name, server port, TLS origination, warm pool)
        routes = [(f"{reach}{kind}{pool}", port, kind == "_tls", pool == "_warm")
                  for reach, (plain_port, tls_port) in (("near", (plain, tls)), ("far", (far_plain, far_tls)))
                  for kind, port in (("", plain_port), ("_tls", tls_port))
                  for pool in ("_cold", "_warm")]
        ports = {name: free_port() for name, *_ in routes}
        with open(f"{work}/attache.yaml", "w") as f:
            f.write("log: {level: warn}\nadmin: {listen: \"off\"}\nlisteners:\n")
            for name, *_ in routes:
                f.write(f"  - {{name: {name}, listen: \"127.0.0.1:{ports[name]}\", protocol: tcp, upstream: {name}, max_connections: 8000}}\n")
            f.write("upstreams:\n")
            for name, port, originate, pooled in routes:
                extra = (f", {origination}" if originate else "") + (f", {warm}" if pooled else "")
                f.write(f"  {name}: {{endpoints: [\"127.0.0.1:{port}\"]{extra}}}\n")
        haproxy = {name: free_port() for name in ("near", "near_tls", "far", "far_tls")}
        with open(f"{work}/haproxy.cfg", "w") as f:
            f.write("global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n"
                    "  timeout client 1h\n  timeout server 1h\n")
            for name, port in (("near", plain), ("near_tls", tls), ("far", far_plain), ("far_tls", far_tls)):
                ssl_options = (f" ssl crt {pki}/app.pem ca-file {pki}/ca.crt verify required sni str(localhost)"
                               if name.endswith("_tls") else "")
                f.write(f"listen {name}\n  bind 127.0.0.1:{haproxy[name]}\n  server s1 127.0.0.1:{port}{ssl_options}\n")
        attache = server([args.attache, "run", "-c", f"{work}/attache.yaml"])
        procs.append(attache)
        procs.append(server(["haproxy", "-f", f"{work}/haproxy.cfg", "-db"]))
        for port in (*ports.values(), *haproxy.values()):
            wait_port(port)

        def targets(reach, direct_plain, direct_tls):
            # name: (port, client TLS context for TTFB, redis-benchmark TLS arguments)
            return {
                "direct": (direct_plain, None, []),
                "attache": (ports[f"{reach}_cold"], None, []),
                "attache + warm pool": (ports[f"{reach}_warm"], None, []),
                "HAProxy": (haproxy[reach], None, []),
                "direct TLS": (direct_tls, client_tls, redis_tls_args),
                "attache TLS origination": (ports[f"{reach}_tls_cold"], None, []),
                "attache TLS origination + warm pool": (ports[f"{reach}_tls_warm"], None, []),
                "HAProxy TLS origination": (haproxy[f"{reach}_tls"], None, []),
            }
        near, far = targets("near", plain, tls), targets("far", far_plain, far_tls)
        rates = {name: [] for name in near}
        latencies = {name: {"p50": [], "p99": []} for name in far}
        loopback = {name: {"p50": [], "p99": []} for name in near}
        for round_number in range(args.rounds):
            for name in near:
                port, _, tls_args = near[name]
                rates[name].append(conn_rate(port, tls_args))
                time.sleep(1)  # let warm pools refill
                port, context, _ = near[name]
                near_p50, near_p99 = ttfb(port, context)
                loopback[name]["p50"].append(near_p50)
                loopback[name]["p99"].append(near_p99)
                port, context, _ = far[name]
                p50, p99 = ttfb(port, context)
                latencies[name]["p50"].append(p50)
                latencies[name]["p99"].append(p99)
                print(f"round {round_number + 1} {name}: {rates[name][-1]:.0f} conn/s on loopback, "
                      f"TTFB on loopback p50 {near_p50:.0f} µs p99 {near_p99:.0f} µs, "
                      f"over {args.rtt_ms} ms RTT p50 {p50:.0f} µs p99 {p99:.0f} µs", file=sys.stderr)

        rate = {name: statistics.median(values) for name, values in rates.items()}
        p50 = {name: statistics.median(values["p50"]) for name, values in latencies.items()}
        p99 = {name: statistics.median(values["p99"]) for name, values in latencies.items()}
        near_p50 = {name: statistics.median(values["p50"]) for name, values in loopback.items()}
        near_p99 = {name: statistics.median(values["p99"]) for name, values in loopback.items()}
        print(f"\nrounds: {args.rounds}; medians; load on CPU {LOAD_CPU}, proxies + servers on CPU {SERVER_CPU}\n")
        print("| target | conn/s | vs direct | TTFB p50 µs | vs direct | TTFB p99 µs "
              f"| TTFB p50 µs, {args.rtt_ms} ms RTT | vs direct | TTFB p99 µs, {args.rtt_ms} ms RTT |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in rate:
            base = "direct TLS" if "TLS" in name else "direct"
            print(f"| {name} | {rate[name]:.0f} | {rate[name] / rate[base]:.2f}x "
                  f"| {near_p50[name]:.0f} | {near_p50[name] / near_p50[base]:.2f}x | {near_p99[name]:.0f} "
                  f"| {p50[name]:.0f} | {p50[name] / p50[base]:.2f}x | {p99[name]:.0f} |")
        print("\n(TLS rows compare with direct TLS: the app doing its own mutual TLS to the server.)")
        plain_targets = ["direct", "attache", "attache + warm pool", "HAProxy"]
        save_results("warm", args.rounds, [
            {"case": "new connections to Redis, plaintext", "unit": "conn/s", "baseline": "direct",
             "values": {name: rate[name] for name in plain_targets}},
            {"case": "new connections to Redis, mutual TLS to the server", "unit": "conn/s", "baseline": "direct TLS",
             "values": {name: rate[name] for name in rate if name not in plain_targets}},
        ], {"peak RSS (8 listeners, 4 warm pools of 32)": peak_rss_mib(attache.pid)})
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
