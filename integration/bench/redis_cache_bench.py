#!/usr/bin/env python3
"""Drives the Redis cache benchmark (see redis_cache.sh and docs/benchmarks.md).

A private redis-server holds 1000 keys (key:000000000000 .. 999, 3-byte
values). redis-benchmark -t get -r 1000 -n 1000000 -c 50 runs against:
direct, attache without a cache (`protocol: redis`), and attache with
`cache: {keys: ["key:"]}`, warmed by one pass first. Reported: GET/s as a
ratio to direct, the hit ratio (attache's own counters), Redis' CPU per
GET (utime + stime of redis-server from /proc, over the run) and how busy
the load generator kept CPU 0 (a run near 100% measures redis-benchmark,
not what is behind it). Then a
write-heavy mix, 25 clients of SET and 25 of GET at once on the same keys,
with and without the cache. redis-benchmark runs on CPU 0; the server and
attache on CPU 1. Everything listens on 127.0.0.1 and stops by itself.
"""
import argparse, os, statistics, subprocess, sys, tempfile, threading, time, urllib.request

from bench_support import (LOAD_CPU, SERVER_CPU, cpu_seconds, free_port, pinned, redis_benchmark_rows, save_results,
                           stop, wait_port)



def benchmark(port, test, requests, clients):
    argv = ["taskset", "-c", LOAD_CPU, "redis-benchmark", "-p", str(port), "-t", test, "-r", "1000",
            "-n", str(requests), "-c", str(clients), "-d", "3", "--csv"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    row = redis_benchmark_rows(out).get(test.upper())
    if row is None:
        raise RuntimeError(f"no {test} rate in {out!r}")
    return row[0]


def load_busy(run):
    """Runs `run()` (a benchmark); its result and the share of CPU 0 the load
    generator kept busy (its user + system time over the wall time)."""
    before, started = os.times(), time.monotonic()
    result = run()
    after, wall = os.times(), time.monotonic() - started
    used = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return result, used / wall


def counters(admin_port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics").read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("attache_redis_cache_requests_total{"):
            result = line.split('result="')[1].split('"')[0]
            values[result] = float(line.rsplit(" ", 1)[1])
    return values


def mixed(port):
    """25 SET clients and 25 GET clients at once; total ops/s."""
    rates = {}

    def one(test):
        rates[test] = benchmark(port, test, 250000, 25)

    threads = [threading.Thread(target=one, args=(test,)) for test in ("set", "get")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return rates["set"] + rates["get"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--attache", required=True)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    procs = []
    workdir = tempfile.mkdtemp(prefix="attache-redis-cache-bench-")
    try:
        server_port = free_port()
        server = pinned(SERVER_CPU, ["redis-server", "--port", str(server_port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--dir", workdir],
                        stdout=subprocess.DEVNULL)
        procs.append(server)
        wait_port(server_port)
        plain_port, cached_port, admin_port = free_port(), free_port(), free_port()
        config = os.path.join(workdir, "attache.yaml")
        with open(config, "w") as f:
            f.write(f"""log: {{level: warn}}
admin: {{listen: 127.0.0.1:{admin_port}}}
listeners:
  - {{name: plain, listen: 127.0.0.1:{plain_port}, protocol: redis, upstream: redis}}
  - name: cached
    listen: 127.0.0.1:{cached_port}
    protocol: redis
    upstream: redis
    redis: {{cache: {{max_memory: 64MiB, keys: ["key:"]}}}}
upstreams:
  redis: {{endpoints: ["127.0.0.1:{server_port}"]}}
""")
        procs.append(pinned(SERVER_CPU, [args.attache, "run", "-c", config], stderr=subprocess.DEVNULL))
        for port in (plain_port, cached_port):
            wait_port(port)
        benchmark(server_port, "set", 100000, 50)
        targets = {"direct": server_port, "attache, no cache": plain_port, "attache, cache": cached_port}
        results = {name: {"get": [], "cpu": [], "hit": [], "mixed": [], "load": []} for name in targets}
        for round_number in range(args.rounds):
            for name, port in targets.items():
                if port == cached_port:
                    benchmark(port, "get", 100000, 50)  # warm
                before, cpu_before = counters(admin_port), cpu_seconds(server.pid)
                rate, busy = load_busy(lambda: benchmark(port, "get", 1000000, 50))
                results[name]["load"].append(busy)
                after, cpu_after = counters(admin_port), cpu_seconds(server.pid)
                results[name]["get"].append(rate)
                results[name]["cpu"].append((cpu_after - cpu_before) / 1000000 * 1e6)
                if port == cached_port:
                    hits = after.get("hit", 0) - before.get("hit", 0)
                    misses = after.get("miss", 0) - before.get("miss", 0)
                    results[name]["hit"].append(hits / max(hits + misses, 1))
                if port != server_port:
                    results[name]["mixed"].append(mixed(port))
                print(f"round {round_number + 1} {name}: GET {rate:.0f}/s", file=sys.stderr)
        med = statistics.median
        direct = med(results["direct"]["get"])
        print(f"\nrounds: {args.rounds}; medians; redis-benchmark -t get -r 1000 -n 1000000 -c 50 on CPU {LOAD_CPU}, "
              f"redis-server + attache on CPU {SERVER_CPU}\n")
        print("| target | GET/s (vs direct) | hit ratio | Redis CPU per GET (vs direct) | load generator busy | 50% SET mix ops/s |")
        print("|---|---|---|---|---|---|")
        direct_cpu = med(results["direct"]["cpu"])
        for name in targets:
            entry = results[name]
            rate, cpu = med(entry["get"]), med(entry["cpu"])
            hit = f"{med(entry['hit']):.1%}" if entry["hit"] else "-"
            mix = f"{med(entry['mixed']):.0f}" if entry["mixed"] else "-"
            load = f"{med(entry['load']):.0%}"
            print(f"| {name} | {rate:.0f} ({rate / direct:.2f}x) | {hit} | {cpu:.2f} µs ({cpu / direct_cpu:.2f}x) | {load} | {mix} |")
        save_results("redis-cache", args.rounds, [
            {"case": "Redis GET, 1000 keys, 50 clients (redis-benchmark -r 1000)", "unit": "ops/s",
             "baseline": "direct", "values": {name: med(results[name]["get"]) for name in targets}},
            {"case": "Redis 50% SET / 50% GET, 1000 keys, 25 + 25 clients", "unit": "ops/s",
             "baseline": "attache, no cache",
             "values": {name: med(results[name]["mixed"]) for name in targets if results[name]["mixed"]}},
        ], {})
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
