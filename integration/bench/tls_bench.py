#!/usr/bin/env python3
"""Drives the mutual-TLS benchmark (see tls.sh and docs/benchmarks.md).

Each target is a tunnel: iperf3 client -> ambassador (plaintext in, mutual
TLS out) -> front door (mutual TLS in, verifies the client certificate) ->
iperf3 server, built from attache, stunnel or HAProxy on both sides.
- tunnel throughput: iperf3, one stream, 5 s; ratio to direct plaintext.
- handshakes/s: `openssl s_time -new` (full handshakes, client certificate)
  against each front door for 5 s; nginx (`stream`, `ssl_verify_client on`)
  joins here as a front door only.
- memory: RSS growth of attache's and HAProxy's front door with 500 mutual-TLS
  connections held open (each did one PING to a private redis-server).
Load generators run on CPU 0; proxies and the iperf3 server on CPU 1.
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time

from bench_support import LOAD_CPU, SERVER_CPU, free_port, pinned, wait_port





def server(argv):
    return pinned(SERVER_CPU, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def iperf(port):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "5", "-J"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8 / 2**20


def handshakes(port, pki):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
                          "-time", "5", "-CAfile", f"{pki}/ca.crt", "-cert", f"{pki}/app.crt", "-key", f"{pki}/app.key"],
                         capture_output=True, text=True).stdout
    match = re.search(r"(\d+) connections in ([\d.]+)s", out)
    return int(match.group(1)) / float(match.group(2)) if match else 0.0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def memory_per_connection(attache, work, pki, count=500):
    """RSS growth per held mutual-TLS connection through attache's and
    HAProxy's front doors to a private redis-server."""
    import ssl
    redis_port, a_door, h_door = free_port(), free_port(), free_port()
    procs = [server(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--maxclients", "10000"])]
    with open(f"{work}/mem.yaml", "w") as f:
        f.write(f"log: {{level: warn}}\nadmin: {{listen: \"off\"}}\nlisteners:\n  - name: door\n    listen: 127.0.0.1:{a_door}\n"
                f"    protocol: tcp\n    upstream: redis\n    tls: {{cert: {pki}/server.crt, key: {pki}/server.key, client_ca: {pki}/ca.crt}}\n"
                f"upstreams:\n  redis: {{endpoints: [\"127.0.0.1:{redis_port}\"]}}\n")
    with open(f"{work}/mem-haproxy.cfg", "w") as f:
        f.write(f"global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n"
                f"  timeout server 1h\nlisten door\n  bind 127.0.0.1:{h_door} ssl crt {pki}/server.pem ca-file {pki}/ca.crt verify required\n"
                f"  server s1 127.0.0.1:{redis_port}\n")
    doors = {"attache": (server([attache, "run", "-c", f"{work}/mem.yaml"]), a_door),
             "haproxy": (server(["haproxy", "-f", f"{work}/mem-haproxy.cfg", "-db"]), h_door)}
    procs += [proc for proc, _ in doors.values()]
    context = ssl.create_default_context(cafile=f"{pki}/ca.crt")
    context.load_cert_chain(f"{pki}/app.crt", f"{pki}/app.key")
    results = {}
    try:
        wait_port(redis_port)
        for name, (proc, port) in doors.items():
            wait_port(port)
            before = rss_kib(proc.pid)
            held = []
            for _ in range(count):
                connection = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
                connection.sendall(b"PING\r\n")
                connection.recv(16)
                held.append(connection)
            time.sleep(0.5)
            results[name] = (rss_kib(proc.pid) - before) * 1024 / count
            for connection in held:
                connection.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--attache", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="attache-tls-bench-")
    pki = os.path.join(work, "pki")
    run = lambda *a: subprocess.run([args.attache, *a], check=True, capture_output=True)
    run("certs", "ca", "--out", pki)
    run("certs", "issue", "--ca", pki, "--out", pki, "--name", "server", "--dns", "localhost", "--ip", "127.0.0.1")
    run("certs", "issue", "--ca", pki, "--out", pki, "--name", "app", "--uri", "spiffe://bench/app")
    for name in ("server", "app"):
        with open(f"{pki}/{name}.pem", "w") as f:
            f.write(open(f"{pki}/{name}.crt").read() + open(f"{pki}/{name}.key").read())
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
        procs.append(server([args.attache, "run", "-c", f"{work}/door.yaml"]))
        procs.append(server([args.attache, "run", "-c", f"{work}/amb.yaml"]))
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
        nginx_door = free_port()
        with open(f"{work}/nginx.conf", "w") as f:
            f.write(f"load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 1;\ndaemon off;\n"
                    f"pid {work}/nginx.pid;\nerror_log {work}/nginx.err;\nevents {{ worker_connections 4096; }}\n"
                    f"stream {{ server {{ listen 127.0.0.1:{nginx_door} ssl; ssl_certificate {pki}/server.crt; "
                    f"ssl_certificate_key {pki}/server.key; ssl_client_certificate {pki}/ca.crt; ssl_verify_client on; "
                    f"proxy_pass 127.0.0.1:{iperf_port}; }} }}\n")
        procs.append(server(["nginx", "-e", f"{work}/nginx.err", "-p", work, "-c", f"{work}/nginx.conf"]))
        wait_port(nginx_door)

        results = {name: {"bulk": [], "hs": []} for name in ["direct", *tunnels, "nginx"]}
        for round_number in range(args.rounds):
            results["direct"]["bulk"].append(iperf(iperf_port))
            for name, (amb, door) in tunnels.items():
                results[name]["bulk"].append(iperf(amb))
                results[name]["hs"].append(handshakes(door, pki))
                print(f"round {round_number + 1} {name}: tunnel {results[name]['bulk'][-1]:.0f} MiB/s, "
                      f"{results[name]['hs'][-1]:.0f} handshakes/s", file=sys.stderr)
            results["nginx"]["hs"].append(handshakes(nginx_door, pki))
        direct = statistics.median(results["direct"]["bulk"])
        best_peer_bulk = max(statistics.median(results[p]["bulk"]) for p in ("stunnel", "haproxy"))
        best_peer_hs = max(statistics.median(results[p]["hs"]) for p in ("stunnel", "haproxy", "nginx"))
        print(f"\nrounds: {args.rounds}; medians; load on CPU {LOAD_CPU}, proxies + iperf3 server on CPU {SERVER_CPU}\n")
        print("| target | tunnel MiB/s | vs direct plaintext | vs best peer | full handshakes/s | vs best peer |")
        print("|---|---|---|---|---|---|")
        print(f"| direct (plaintext) | {direct:.0f} | 1.00x | - | - | - |")
        for name in tunnels:
            bulk, hs = statistics.median(results[name]["bulk"]), statistics.median(results[name]["hs"])
            print(f"| {name} | {bulk:.0f} | {bulk / direct:.2f}x | {bulk / best_peer_bulk:.2f}x | {hs:.0f} | {hs / best_peer_hs:.2f}x |")
        nginx_hs = statistics.median(results["nginx"]["hs"])
        print(f"| nginx (front door only) | - | - | - | {nginx_hs:.0f} | {nginx_hs / best_peer_hs:.2f}x |")
        print()
        for name, per_connection in memory_per_connection(args.attache, work, pki).items():
            print(f"{name}: {per_connection:.0f} bytes of RSS per held mutual-TLS connection")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
