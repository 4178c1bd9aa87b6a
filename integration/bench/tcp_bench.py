#!/usr/bin/env python3
"""Drives the L4 benchmark (see tcp.sh and docs/benchmarks.md for the method).

Targets, alternated within each round: direct, attache, haproxy.
- bulk:      iperf3, one stream, 5 s, through the target to an iperf3 server.
- conn rate: redis-benchmark -k 0 (a new connection per PING) through the
             target to a private redis-server.
- CPU/conn:  the proxy's utime+stime (from /proc/PID/stat) over the conn-rate
             run, divided by the connections it served.
- memory:    attache's RSS when idle, and per idle proxied connection with
             1000 connections held open.
Load generators run on CPU 0; proxies and upstream servers on CPU 1.
Everything listens on 127.0.0.1 and stops by itself.
"""
import argparse, json, os, socket, statistics, subprocess, sys, tempfile, time

from bench_support import LOAD_CPU, SERVER_CPU, cpu_seconds, free_port, peak_rss_mib, pinned, rss_kib, save_results, stop, wait_port

BENCH_CONNECTIONS = 20000





def iperf(port):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(port),
                          "-t", "5", "-J"], capture_output=True, text=True, check=True).stdout
    received = json.loads(out)["end"]["sum_received"]
    return received["bits_per_second"] / 8 / 2**20, received["bytes"] / 2**30  # MiB/s, GiB


def conn_rate(port):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "redis-benchmark", "-p", str(port), "-t", "ping_mbulk",
                          "-n", str(BENCH_CONNECTIONS), "-c", "8", "-k", "0", "--csv"],
                         capture_output=True, text=True, check=True).stdout
    row = [line for line in out.splitlines() if "PING_MBULK" in line][0]
    return float(row.split(",")[1].strip('"'))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--attache", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    procs = []
    workdir = tempfile.mkdtemp(prefix="attache-bench-")
    try:
        iperf_port, redis_port = free_port(), free_port()
        procs.append(pinned(SERVER_CPU, ["iperf3", "-s", "-p", str(iperf_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL))
        procs.append(pinned(SERVER_CPU, ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--maxclients", "10000"],
                            stdout=subprocess.DEVNULL))
        wait_port(iperf_port); wait_port(redis_port)

        a_bulk, a_redis, a_admin = free_port(), free_port(), free_port()
        config = os.path.join(workdir, "attache.yaml")
        with open(config, "w") as f:
            f.write(f"""log: {{level: warn}}
admin: {{listen: 127.0.0.1:{a_admin}}}
listeners:
  - {{name: bulk, listen: 127.0.0.1:{a_bulk}, protocol: tcp, upstream: iperf}}
  - {{name: redis, listen: 127.0.0.1:{a_redis}, protocol: tcp, upstream: redis, max_connections: 20000}}
upstreams:
  iperf: {{endpoints: ["127.0.0.1:{iperf_port}"]}}
  redis: {{endpoints: ["127.0.0.1:{redis_port}"]}}
""")
        attache = pinned(SERVER_CPU, [args.attache, "run", "-c", config], stderr=subprocess.DEVNULL)
        procs.append(attache)

        h_bulk, h_redis = free_port(), free_port()
        hcfg = os.path.join(workdir, "haproxy.cfg")
        with open(hcfg, "w") as f:
            f.write(f"""global
  nbthread 1
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen bulk
  bind 127.0.0.1:{h_bulk}
  server s1 127.0.0.1:{iperf_port}
listen redis
  bind 127.0.0.1:{h_redis}
  server s1 127.0.0.1:{redis_port}
""")
        haproxy = pinned(SERVER_CPU, ["haproxy", "-f", hcfg, "-db"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        procs.append(haproxy)
        for port in (a_bulk, a_redis, h_bulk, h_redis):
            wait_port(port)

        targets = {
            "direct": (iperf_port, redis_port, None),
            "attache": (a_bulk, a_redis, attache.pid),
            "haproxy": (h_bulk, h_redis, haproxy.pid),
        }
        results = {name: {"bulk": [], "rate": [], "cpu_us": [], "cpu_gib": []} for name in targets}
        for round_number in range(args.rounds):
            for name, (bulk_port, redis_port_through, pid) in targets.items():
                before = cpu_seconds(pid) if pid else 0
                throughput, gib = iperf(bulk_port)
                results[name]["bulk"].append(throughput)
                if pid:
                    results[name]["cpu_gib"].append((cpu_seconds(pid) - before) / gib)
                before = cpu_seconds(pid) if pid else 0
                results[name]["rate"].append(conn_rate(redis_port_through))
                if pid:
                    results[name]["cpu_us"].append((cpu_seconds(pid) - before) / BENCH_CONNECTIONS * 1e6)
                print(f"round {round_number + 1} {name}: bulk {results[name]['bulk'][-1]:.0f} MiB/s, "
                      f"conn rate {results[name]['rate'][-1]:.0f}/s", file=sys.stderr)

        # Memory: idle, then with 1000 idle proxied connections.
        idle_rss = rss_kib(attache.pid)
        held = [socket.create_connection(("127.0.0.1", a_redis)) for _ in range(1000)]
        for s in held:  # one round trip each: every connection is fully proxied
            s.sendall(b"PING\r\n")
        for s in held:
            s.recv(16)
        time.sleep(0.5)
        loaded_rss = rss_kib(attache.pid)
        for s in held:
            s.close()

        direct_bulk = statistics.median(results["direct"]["bulk"])
        direct_rate = statistics.median(results["direct"]["rate"])
        haproxy_rate = statistics.median(results["haproxy"]["rate"])
        print(f"\nrounds: {args.rounds}; medians; load on CPU {LOAD_CPU}, proxy + upstream on CPU {SERVER_CPU}\n")
        print("| target | bulk MiB/s | bulk vs direct | proxy CPU s/GiB | conn/s | conn/s vs direct | conn/s vs HAProxy | proxy CPU µs/conn |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in results.items():
            bulk, rate = statistics.median(r["bulk"]), statistics.median(r["rate"])
            cpu = f"{statistics.median(r['cpu_us']):.1f}" if r["cpu_us"] else "-"
            cpu_gib = f"{statistics.median(r['cpu_gib']):.2f}" if r["cpu_gib"] else "-"
            print(f"| {name} | {bulk:.0f} | {bulk / direct_bulk:.2f}x | {cpu_gib} | {rate:.0f} | {rate / direct_rate:.2f}x "
                  f"| {rate / haproxy_rate:.2f}x | {cpu} |")
        print(f"\nattache RSS idle: {idle_rss / 1024:.1f} MiB; with 1000 idle proxied connections: "
              f"{loaded_rss / 1024:.1f} MiB ({(loaded_rss - idle_rss) / 1000 * 1024:.0f} bytes per connection)")
        medians = {name: {key: statistics.median(values) for key, values in r.items() if values}
                   for name, r in results.items()}
        save_results("tcp", args.rounds, [
            {"case": "TCP bulk transfer (iperf3)", "unit": "MiB/s", "baseline": "direct",
             "values": {name: m["bulk"] for name, m in medians.items()}},
            {"case": "TCP new connections (redis-benchmark -k 0)", "unit": "conn/s", "baseline": "direct",
             "values": {name: m["rate"] for name, m in medians.items()}},
        ], {"idle RSS": idle_rss / 1024, "RSS with 1000 idle connections": loaded_rss / 1024,
            "peak RSS": peak_rss_mib(attache.pid),
            "KiB per idle connection": (loaded_rss - idle_rss) / 1000})
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
