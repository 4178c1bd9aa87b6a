#!/usr/bin/env python3
"""Drives the mutual-TLS benchmark (see tls.sh and docs/benchmarks.md).

Each target is a tunnel: iperf3 client -> ambassador (plaintext in, mutual
TLS out) -> front door (mutual TLS in, verifies the client certificate) ->
iperf3 server, built from attache, stunnel or HAProxy on both sides.
- tunnel throughput: iperf3, one stream, 5 s; ratio to direct plaintext.
- handshakes/s: `openssl s_time -new` (full handshakes, client certificate)
  for 5 s against front doors of attache, stunnel, HAProxy and nginx
  (`stream`, `ssl_verify_client on`) in front of a private redis-server.
- memory: RSS growth of attache's and HAProxy's front door with 500 mutual-TLS
  connections held open (each did one PING through to the redis-server).
- origination under load: redis-benchmark GET, 64 connections, plaintext to
  an ambassador (attache, nginx `stream` with `proxy_ssl`, HAProxy `server
  ... ssl`) that originates mutual TLS to a TLS-only redis-server; and
  redis-benchmark --tls straight to it (direct). Throughput and p99 latency.
Load generators run on CPU 0; proxies and the iperf3 server on CPU 1.
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time

from bench_support import (LOAD_CPU, SERVER_CPU, free_port, make_pki, peak_rss_mib, pinned, redis_benchmark_rows,
                           save_results, stop, wait_port)





def server(argv):
    return pinned(SERVER_CPU, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def iperf(port):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "5", "-J"],
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    if "error" in report:
        raise RuntimeError(f"iperf3 through port {port}: {report['error']}")
    return report["end"]["sum_received"]["bits_per_second"] / 8 / 2**20


def handshakes(port, pki):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
                          "-time", "5", "-CAfile", f"{pki}/ca.crt", "-cert", f"{pki}/app.crt", "-key", f"{pki}/app.key"],
                         capture_output=True, text=True).stdout
    match = re.search(r"(\d+) connections in ([\d.]+)s", out)
    return int(match.group(1)) / float(match.group(2)) if match else 0.0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def front_doors(attache, stunnel, work, pki, rounds, count=500):
    """Front doors of all four products in front of a private redis-server:
    full-handshake rate for each (alternated, `rounds` times), then RSS
    growth per held mutual-TLS connection for attache and HAProxy. (Doors to
    a real service, not to iperf3: a handshake flood would wedge iperf3.)"""
    import ssl
    redis_port = free_port()
    ports = {name: free_port() for name in ("attache", "stunnel", "haproxy", "nginx")}
    procs = [server(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--maxclients", "10000"])]
    with open(f"{work}/hs.yaml", "w") as f:
        f.write(f"log: {{level: warn}}\nadmin: {{listen: \"off\"}}\nlisteners:\n  - name: door\n    listen: 127.0.0.1:{ports['attache']}\n"
                f"    protocol: tcp\n    upstream: redis\n    tls: {{cert: {pki}/server.crt, key: {pki}/server.key, client_ca: {pki}/ca.crt}}\n"
                f"upstreams:\n  redis: {{endpoints: [\"127.0.0.1:{redis_port}\"]}}\n")
    with open(f"{work}/hs-stunnel.conf", "w") as f:
        f.write(f"foreground = yes\npid =\n[door]\naccept = 127.0.0.1:{ports['stunnel']}\nconnect = 127.0.0.1:{redis_port}\n"
                f"cert = {pki}/server.crt\nkey = {pki}/server.key\nCAfile = {pki}/ca.crt\nverify = 2\n")
    with open(f"{work}/hs-haproxy.cfg", "w") as f:
        f.write(f"global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n"
                f"  timeout server 1h\nlisten door\n  bind 127.0.0.1:{ports['haproxy']} ssl crt {pki}/server.pem ca-file {pki}/ca.crt verify required\n"
                f"  server s1 127.0.0.1:{redis_port}\n")
    with open(f"{work}/hs-nginx.conf", "w") as f:
        f.write(f"load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 1;\ndaemon off;\n"
                f"pid {work}/nginx.pid;\nerror_log {work}/nginx.err;\nevents {{ worker_connections 4096; }}\n"
                f"stream {{ server {{ listen 127.0.0.1:{ports['nginx']} ssl; ssl_certificate {pki}/server.crt; "
                f"ssl_certificate_key {pki}/server.key; ssl_client_certificate {pki}/ca.crt; ssl_verify_client on; "
                f"proxy_pass 127.0.0.1:{redis_port}; }} }}\n")
    doors = {
        "attache": server([attache, "run", "-c", f"{work}/hs.yaml"]),
        "stunnel": server([stunnel, f"{work}/hs-stunnel.conf"]),
        "haproxy": server(["haproxy", "-f", f"{work}/hs-haproxy.cfg", "-db"]),
        "nginx": server(["nginx", "-e", f"{work}/nginx.err", "-p", work, "-c", f"{work}/hs-nginx.conf"]),
    }
    procs += list(doors.values())
    try:
        wait_port(redis_port)
        for port in ports.values():
            wait_port(port)
        rates = {name: [] for name in doors}
        for _ in range(rounds):
            for name in doors:
                rates[name].append(handshakes(ports[name], pki))
        context = ssl.create_default_context(cafile=f"{pki}/ca.crt")
        context.load_cert_chain(f"{pki}/app.crt", f"{pki}/app.key")
        memory = {}
        for name in ("attache", "haproxy"):
            pid = doors[name].pid
            before = rss_kib(pid)
            held = []
            for _ in range(count):
                connection = context.wrap_socket(socket.create_connection(("127.0.0.1", ports[name])),
                                                 server_hostname="localhost")
                connection.sendall(b"PING\r\n")
                connection.recv(16)
                held.append(connection)
            time.sleep(0.5)
            memory[name] = (rss_kib(pid) - before) * 1024 / count
            for connection in held:
                connection.close()
        door_peak = peak_rss_mib(doors["attache"].pid)
    finally:
        stop(procs)
    return {name: statistics.median(values) for name, values in rates.items()}, memory, door_peak


def benchmark_get(port, pki=None):
    """redis-benchmark GET, 64 connections, 200,000 requests (with `pki`:
    mutual TLS straight to the server): (requests/s, p99 ms)."""
    argv = ["taskset", "-c", LOAD_CPU, "redis-benchmark", "-p", str(port), "-t", "get", "-n", "200000", "-c", "64",
            "--csv"]
    if pki:
        argv += ["--tls", "--cacert", f"{pki}/ca.crt", "--cert", f"{pki}/app.crt", "--key", f"{pki}/app.key"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    row = redis_benchmark_rows(out)["GET"]
    return row[0], row[5]


def origination(attache, work, pki, rounds):
    """Ambassadors that originate mutual TLS to a TLS-only redis-server,
    under redis-benchmark's 64 connections (alternated, `rounds` times):
    {target: (median requests/s, median p99 ms)}."""
    redis_port = free_port()
    ports = {name: free_port() for name in ("attache", "nginx", "haproxy")}
    procs = [server(["redis-server", "--port", "0", "--tls-port", str(redis_port), "--bind", "127.0.0.1",
                     "--tls-cert-file", f"{pki}/server.crt", "--tls-key-file", f"{pki}/server.key",
                     "--tls-ca-cert-file", f"{pki}/ca.crt", "--tls-auth-clients", "yes", "--save", "",
                     "--appendonly", "no"])]
    with open(f"{work}/origin.yaml", "w") as f:
        f.write(f"log: {{level: warn}}\nadmin: {{listen: \"off\"}}\nlisteners:\n  - name: amb\n"
                f"    listen: 127.0.0.1:{ports['attache']}\n    protocol: tcp\n    upstream: redis\n"
                f"upstreams:\n  redis:\n    endpoints: [\"127.0.0.1:{redis_port}\"]\n"
                f"    tls: {{ca: {pki}/ca.crt, cert: {pki}/app.crt, key: {pki}/app.key, server_name: localhost}}\n")
    with open(f"{work}/origin-nginx.conf", "w") as f:
        f.write(f"load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 1;\ndaemon off;\n"
                f"pid {work}/origin-nginx.pid;\nerror_log {work}/origin-nginx.err;\nevents {{ worker_connections 4096; }}\n"
                f"stream {{ server {{ listen 127.0.0.1:{ports['nginx']}; proxy_pass 127.0.0.1:{redis_port}; "
                f"proxy_ssl on; proxy_ssl_certificate {pki}/app.crt; proxy_ssl_certificate_key {pki}/app.key; "
                f"proxy_ssl_trusted_certificate {pki}/ca.crt; proxy_ssl_verify on; proxy_ssl_name localhost; "
                f"proxy_ssl_session_reuse on; }} }}\n")
    with open(f"{work}/origin-haproxy.cfg", "w") as f:
        f.write(f"global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n"
                f"  timeout server 1h\nlisten amb\n  bind 127.0.0.1:{ports['haproxy']}\n"
                f"  server s1 127.0.0.1:{redis_port} ssl crt {pki}/app.pem ca-file {pki}/ca.crt verify required "
                f"sni str(localhost)\n")
    procs += [server([attache, "run", "-c", f"{work}/origin.yaml"]),
              server(["nginx", "-e", f"{work}/origin-nginx.err", "-p", work, "-c", f"{work}/origin-nginx.conf"]),
              server(["haproxy", "-f", f"{work}/origin-haproxy.cfg", "-db"])]
    try:
        wait_port(redis_port)
        for port in ports.values():
            wait_port(port)
        runs = {name: [] for name in ("direct", *ports)}
        for _ in range(rounds):
            runs["direct"].append(benchmark_get(redis_port, pki))
            for name, port in ports.items():
                runs[name].append(benchmark_get(port))
                print(f"origination {name}: {runs[name][-1][0]:.0f} req/s, p99 {runs[name][-1][1]} ms",
                      file=sys.stderr)
    finally:
        stop(procs)
    return {name: (statistics.median(rps for rps, _ in values), statistics.median(p99 for _, p99 in values))
            for name, values in runs.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--attache", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="attache-tls-bench-")
    pki = make_pki(args.attache, work)
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")

    procs = []
    try:
        iperf_port = free_port()
        procs.append(server(["iperf3", "-s", "-p", str(iperf_port)]))
        wait_port(iperf_port)
        tunnels = {}
        # attache
        door, amb = free_port(), free_port()
        with open(f"{work}/door.yaml", "w") as f:
            f.write(f"log: {{level: warn}}\nadmin: {{listen: \"off\"}}\nlisteners:\n  - name: door\n    listen: 127.0.0.1:{door}\n"
                    f"    protocol: tcp\n    upstream: iperf\n    tls: {{cert: {pki}/server.crt, key: {pki}/server.key, client_ca: {pki}/ca.crt}}\n"
                    f"upstreams:\n  iperf: {{endpoints: [\"127.0.0.1:{iperf_port}\"]}}\n")
        with open(f"{work}/amb.yaml", "w") as f:
            f.write(f"log: {{level: warn}}\nadmin: {{listen: \"off\"}}\nlisteners:\n  - name: amb\n    listen: 127.0.0.1:{amb}\n"
                    f"    protocol: tcp\n    upstream: door\nupstreams:\n  door:\n    endpoints: [\"127.0.0.1:{door}\"]\n"
                    f"    tls: {{ca: {pki}/ca.crt, cert: {pki}/app.crt, key: {pki}/app.key, server_name: localhost}}\n")
        attache_door = server([args.attache, "run", "-c", f"{work}/door.yaml"])
        attache_ambassador = server([args.attache, "run", "-c", f"{work}/amb.yaml"])
        procs += [attache_door, attache_ambassador]
        tunnels["attache"] = (amb, door)
        # stunnel
        door, amb = free_port(), free_port()
        with open(f"{work}/stunnel.conf", "w") as f:
            f.write(f"foreground = yes\npid =\n[door]\naccept = 127.0.0.1:{door}\nconnect = 127.0.0.1:{iperf_port}\n"
                    f"cert = {pki}/server.crt\nkey = {pki}/server.key\nCAfile = {pki}/ca.crt\nverify = 2\n"
                    f"[amb]\nclient = yes\naccept = 127.0.0.1:{amb}\nconnect = 127.0.0.1:{door}\n"
                    f"cert = {pki}/app.crt\nkey = {pki}/app.key\nCAfile = {pki}/ca.crt\nverify = 2\n")
        procs.append(server([stunnel, f"{work}/stunnel.conf"]))
        tunnels["stunnel"] = (amb, door)
        # HAProxy
        door, amb = free_port(), free_port()
        with open(f"{work}/haproxy.cfg", "w") as f:
            f.write(f"global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n"
                    f"  timeout server 1h\nlisten door\n  bind 127.0.0.1:{door} ssl crt {pki}/server.pem ca-file {pki}/ca.crt verify required\n"
                    f"  server s1 127.0.0.1:{iperf_port}\nlisten amb\n  bind 127.0.0.1:{amb}\n"
                    f"  server s1 127.0.0.1:{door} ssl crt {pki}/app.pem ca-file {pki}/ca.crt verify required sni str(localhost)\n")
        procs.append(server(["haproxy", "-f", f"{work}/haproxy.cfg", "-db"]))
        tunnels["haproxy"] = (amb, door)
        for amb, door in tunnels.values():
            wait_port(amb); wait_port(door)

        results = {name: [] for name in ["direct", *tunnels]}
        for round_number in range(args.rounds):
            results["direct"].append(iperf(iperf_port))
            for name, (amb, _door) in tunnels.items():
                results[name].append(iperf(amb))
                print(f"round {round_number + 1} {name}: tunnel {results[name][-1]:.0f} MiB/s", file=sys.stderr)
        tunnel_peak = max(peak_rss_mib(attache_door.pid), peak_rss_mib(attache_ambassador.pid))
        stop(procs)
        procs = []
        rates, memory, door_peak = front_doors(args.attache, stunnel, work, pki, args.rounds)
        originated = origination(args.attache, work, pki, max(args.rounds, 3))

        bulk = {name: statistics.median(values) for name, values in results.items()}
        best_peer_bulk = max(bulk["stunnel"], bulk["haproxy"])
        best_peer_hs = max(rates["stunnel"], rates["haproxy"], rates["nginx"])
        print(f"\nrounds: {args.rounds}; medians; load on CPU {LOAD_CPU}, proxies + servers on CPU {SERVER_CPU}\n")
        print("| target | tunnel MiB/s | vs direct plaintext | vs best peer | full handshakes/s | vs best peer |")
        print("|---|---|---|---|---|---|")
        print(f"| direct (plaintext) | {bulk['direct']:.0f} | 1.00x | - | - | - |")
        for name in tunnels:
            print(f"| {name} | {bulk[name]:.0f} | {bulk[name] / bulk['direct']:.2f}x | {bulk[name] / best_peer_bulk:.2f}x "
                  f"| {rates[name]:.0f} | {rates[name] / best_peer_hs:.2f}x |")
        print(f"| nginx (front door only) | - | - | - | {rates['nginx']:.0f} | {rates['nginx'] / best_peer_hs:.2f}x |")
        print("\n| origination (redis-benchmark GET, 64 connections) | requests/s | vs direct TLS | p99 ms |")
        print("|---|---|---|---|")
        for name, (rps, p99) in originated.items():
            print(f"| {name} | {rps:.0f} | {rps / originated['direct'][0]:.2f}x | {p99:.2f} |")
        print()
        for name, per_connection in memory.items():
            print(f"{name}: {per_connection:.0f} bytes of RSS per held mutual-TLS connection")
        save_results("tls", args.rounds, [
            {"case": "mTLS tunnel bulk transfer (iperf3; direct is plaintext)", "unit": "MiB/s", "baseline": "direct",
             "values": bulk},
            {"case": "mTLS origination, redis-benchmark GET, 64 connections (direct: redis-benchmark --tls)",
             "unit": "req/s", "baseline": "direct", "values": {name: rps for name, (rps, _) in originated.items()}},
        ], {"peak RSS, tunnel end (bulk)": tunnel_peak, "peak RSS, front door (handshakes, 500 held)": door_peak,
            "KiB per held mTLS connection": memory["attache"] / 1024})
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
