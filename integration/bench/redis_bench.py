#!/usr/bin/env python3
"""Drives the Redis benchmark (see redis.sh and docs/benchmarks.md).

redis-benchmark -t get,set,incr,lpush -n 200000 -c 50, without pipelining
and with -P 16, against: direct (a private redis-server), attache
(protocol: redis, 2 shared connections), attache-tcp (protocol: tcp, one
upstream connection per client) and twemproxy (nutcracker, one server
connection). While each run lasts, the server's connected_clients is
sampled; the peak, less the sampling connection, is the number of upstream
connections the target used. First, while both are fresh, the RSS attache
and twemproxy gain per idle client (500 clients that sent one PING each).
redis-benchmark runs on CPU 0; the server and the proxies on CPU 1.
Everything listens on 127.0.0.1 and stops by itself.
"""
import argparse, os, socket, statistics, subprocess, sys, tempfile, threading, time

from bench_support import (LOAD_CPU, SERVER_CPU, free_port, idle_kib_per_connection, peak_rss_mib, pinned,
                           redis_benchmark_rows, save_results, stop, wait_port)

TESTS = ["SET", "GET", "INCR", "LPUSH"]


def connected_clients(port):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"INFO clients\r\n")
        data = b""
        while b"connected_clients:" not in data or not data.endswith(b"\r\n"):
            data += s.recv(4096)
        for line in data.decode().splitlines():
            if line.startswith("connected_clients:"):
                return int(line.split(":")[1])
    return 0


def run(port, pipeline, server_port):
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], connected_clients(server_port) - 1)
            except OSError:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    argv = ["taskset", "-c", LOAD_CPU, "redis-benchmark", "-p", str(port), "-t", "get,set,incr,lpush",
            "-n", "200000", "-c", "50", "--csv"]
    if pipeline > 1:
        argv += ["-P", str(pipeline)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    done.set()
    sampler.join()
    rates = {test: row[0] for test, row in redis_benchmark_rows(out).items() if test in TESTS}
    return rates, peak[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--attache", required=True)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    procs = []
    workdir = tempfile.mkdtemp(prefix="attache-redis-bench-")
    try:
        server_port = free_port()
        procs.append(pinned(SERVER_CPU, ["redis-server", "--port", str(server_port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL))
        wait_port(server_port)
        resp_port, tcp_port, admin_port, twem_port = free_port(), free_port(), free_port(), free_port()
        config = os.path.join(workdir, "attache.yaml")
        with open(config, "w") as f:
            f.write(f"""log: {{level: warn}}
admin: {{listen: 127.0.0.1:{admin_port}}}
listeners:
  - {{name: resp, listen: 127.0.0.1:{resp_port}, protocol: redis, upstream: redis}}
  - {{name: tcp, listen: 127.0.0.1:{tcp_port}, protocol: tcp, upstream: redis}}
upstreams:
  redis: {{endpoints: ["127.0.0.1:{server_port}"]}}
""")
        attache = pinned(SERVER_CPU, [args.attache, "run", "-c", config], stderr=subprocess.DEVNULL)
        procs.append(attache)
        twem_conf = os.path.join(workdir, "nutcracker.yml")
        with open(twem_conf, "w") as f:
            f.write(f"""bench:
  listen: 127.0.0.1:{twem_port}
  redis: true
  server_connections: 1
  servers:
    - 127.0.0.1:{server_port}:1
""")
        twemproxy = pinned(SERVER_CPU, ["nutcracker", "-c", twem_conf, "-o", os.path.join(workdir, "twem.log")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(twemproxy)
        for port in (resp_port, tcp_port, twem_port):
            wait_port(port)
        # First, while both are fresh: after the load, a pool allocator
        # hands idle clients memory the load already touched.
        ping = b"*1\r\n$4\r\nPING\r\n"
        idle = {name: idle_kib_per_connection(port, pid, ping, b"+PONG\r\n")
                for name, port, pid in (("attache", resp_port, attache.pid), ("twemproxy", twem_port, twemproxy.pid))}
        targets = {"direct": server_port, "attache": resp_port, "attache-tcp": tcp_port, "twemproxy": twem_port}
        results = {}
        for round_number in range(args.rounds):
            for pipeline in (1, 16):
                for name, port in targets.items():
                    rates, connections = run(port, pipeline, server_port)
                    entry = results.setdefault((name, pipeline), {"rates": {t: [] for t in TESTS}, "connections": []})
                    for test in TESTS:
                        entry["rates"][test].append(rates.get(test, float("nan")))
                    entry["connections"].append(connections)
                    print(f"round {round_number + 1} -P {pipeline} {name}: "
                          + ", ".join(f"{t} {rates.get(t, 0):.0f}" for t in TESTS)
                          + f"; upstream connections {connections}", file=sys.stderr)
        med = statistics.median
        print(f"\nrounds: {args.rounds}; medians; redis-benchmark -n 200000 -c 50 on CPU {LOAD_CPU}, "
              f"redis-server + proxies on CPU {SERVER_CPU}\n")
        print("| -P | target | " + " | ".join(f"{t} ops/s (vs direct)" for t in TESTS) + " | upstream connections |")
        print("|---|---|" + "---|" * len(TESTS) + "---|")
        for pipeline in (1, 16):
            direct = {t: med(results[("direct", pipeline)]["rates"][t]) for t in TESTS}
            for name in targets:
                entry = results[(name, pipeline)]
                cells = []
                for t in TESTS:
                    rate = med(entry["rates"][t])
                    cells.append(f"{rate:.0f} ({rate / direct[t]:.2f}x)")
                print(f"| {pipeline} | {name} | " + " | ".join(cells) + f" | {max(entry['connections'])} |")
        print("\n| memory per idle client | " + " | ".join(idle) + " |")
        print("|---|" + "---|" * len(idle))
        print("| KiB of RSS | " + " | ".join(f"{kib:.1f}" for kib in idle.values()) + " |")
        names = {"direct": "direct", "attache": "attache (protocol: redis)", "attache-tcp": "attache (protocol: tcp)",
                 "twemproxy": "twemproxy"}
        save_results("redis", args.rounds, [
            {"case": f"Redis GET, 50 clients{', pipelines of 16' if pipeline > 1 else ''} (redis-benchmark)",
             "unit": "ops/s", "baseline": "direct",
             "values": {names[name]: med(results[(name, pipeline)]["rates"]["GET"]) for name in targets}}
            for pipeline in (1, 16)
        ], {"peak RSS (50 clients on each listener)": peak_rss_mib(attache.pid),
            "per idle client (500 held)": idle["attache"] / 1024})
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
