#!/usr/bin/env python3
"""Drives the MySQL pooling benchmark (see mysql.sh and docs/benchmarks.md).

A sysbench oltp_point_select table (10,000 rows) in schema attache_bench on
the local MariaDB 3306. sysbench runs on CPU 0 with 50 threads; HAProxy
and attache on CPU 1 (MariaDB is not pinned). Targets: direct, HAProxy
mode tcp, attache tcp, attache mysql (pool_mode: transaction, pool_size:
10, loopback clients trusted, its other settings at their defaults). Each
target: queries per second, errors, the proxy's CPU per query (utime +
stime from /proc over the run) and the most server connections seen in
the schema during the run.

Two workloads: sysbench at its defaults (binary-protocol prepared
statements, --db-ps-mode=auto) and with --db-ps-mode=disable (text
queries); then a connection per query: mariadb-slap, 50 clients, each
closing and reopening its connection after every `SELECT 1` (--detach=1).
Everything listens on 127.0.0.1 and stops by itself.
"""
import argparse, os, re, subprocess, sys, tempfile, threading

from bench_support import LOAD_CPU, SERVER_CPU, cpu_seconds, free_port, pinned, stop, wait_port

SCHEMA = "attache_bench"
POOL_SIZE = 10


def mariadb(sql):
    return subprocess.run(["mariadb", "--protocol=tcp", "-h", "127.0.0.1", "-u", "root", "-N", "-B", "-e", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def sysbench(port, seconds, command, *extra):
    argv = ["taskset", "-c", LOAD_CPU, "sysbench", "oltp_point_select", "--db-driver=mysql",
            "--mysql-host=127.0.0.1", f"--mysql-port={port}", "--mysql-user=root", f"--mysql-db={SCHEMA}",
            "--tables=1", "--table-size=10000", *extra, command]
    run = subprocess.run(argv, capture_output=True, text=True)
    return run.returncode, run.stdout + run.stderr


SLAP_QUERIES = 20000


def slap(port):
    """mariadb-slap, 50 clients, a new connection for every query: (code, output, seconds)."""
    argv = ["taskset", "-c", LOAD_CPU, "mariadb-slap", "--protocol=tcp", "-h", "127.0.0.1", f"-P{port}",
            "-uroot", f"--create-schema={SCHEMA}", "--no-drop", "--concurrency=50",
            f"--number-of-queries={SLAP_QUERIES}", "--detach=1", "--query=SELECT 1", "--iterations=1"]
    run = subprocess.run(argv, capture_output=True, text=True)
    match = re.search(r"Average number of seconds to run all queries: ([0-9.]+)", run.stdout)
    return run.returncode, run.stdout + run.stderr, float(match.group(1)) if match else 0.0


def table(title, rows, unit):
    """Prints one markdown table; rows: (name, rate, errors, cpu, most, code, output)."""
    direct = rows[0][1] or 1
    print(f"\n{title}\n")
    print(f"| target | {unit} | vs direct | errors | proxy CPU per query | most server connections |")
    print("|---|---|---|---|---|---|")
    for name, rate, errors, cpu, most, code, output in rows:
        shown = f"{rate:.0f}" if code == 0 else f"fails: `{output.strip().splitlines()[-1]}`"
        print(f"| {name} | {shown} | {rate / direct:.2f}x | {errors} | {cpu} | {most} |")


def connections_watcher(stop_event, most):
    """Polls the schema's server connections until stopped; keeps the most."""
    while not stop_event.is_set():
        count = int(mariadb(f"SELECT COUNT(*) FROM information_schema.processlist WHERE db = '{SCHEMA}'"))
        most[0] = max(most[0], count)
        stop_event.wait(0.2)


def measured(pid, run):
    """Runs `run()` while watching the schema's server connections: its
    result, the proxy's CPU seconds over it (0 without a proxy) and the most
    server connections seen."""
    most, stop_event = [0], threading.Event()
    watcher = threading.Thread(target=connections_watcher, args=(stop_event, most))
    watcher.start()
    before = cpu_seconds(pid) if pid else 0
    result = run()
    used = cpu_seconds(pid) - before if pid else 0
    stop_event.set()
    watcher.join()
    return result, used, most[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--attache", required=True)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    procs = []
    workdir = tempfile.mkdtemp(prefix="attache-mysql-bench-")
    try:
        mariadb(f"DROP DATABASE IF EXISTS {SCHEMA}; CREATE DATABASE {SCHEMA}")
        code, output = sysbench(3306, args.seconds, "prepare")
        if code:
            sys.exit(output)
        tcp_port, pool_port, haproxy_port, admin_port = free_port(), free_port(), free_port(), free_port()
        config = os.path.join(workdir, "attache.yaml")
        with open(config, "w") as f:
            f.write(f"""log: {{level: warn}}
admin: {{listen: 127.0.0.1:{admin_port}}}
listeners:
  - {{name: tcp, listen: 127.0.0.1:{tcp_port}, protocol: tcp, upstream: mariadb}}
  - name: pool
    listen: 127.0.0.1:{pool_port}
    protocol: mysql
    upstream: mariadb
    mysql: {{pool_size: {POOL_SIZE}}}
upstreams:
  mariadb: {{endpoints: ["127.0.0.1:3306"]}}
""")
        attache = pinned(SERVER_CPU, [args.attache, "run", "-c", config], stderr=subprocess.DEVNULL)
        procs.append(attache)
        haproxy_config = os.path.join(workdir, "haproxy.cfg")
        with open(haproxy_config, "w") as f:
            f.write(f"""global
  nbthread 1
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen mariadb
  bind 127.0.0.1:{haproxy_port}
  server s1 127.0.0.1:3306
""")
        haproxy = pinned(SERVER_CPU, ["haproxy", "-f", haproxy_config, "-db"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        procs.append(haproxy)
        for port in (tcp_port, pool_port, haproxy_port):
            wait_port(port)

        targets = [("direct", 3306, None), ("haproxy tcp", haproxy_port, haproxy.pid),
                   ("attache tcp", tcp_port, attache.pid), (f"attache mysql, pool {POOL_SIZE}", pool_port, attache.pid)]
        for mode in ("auto", "disable"):
            rows = []
            for name, port, pid in targets:
                (code, output), used, most = measured(pid, lambda: sysbench(
                    port, args.seconds, "run", "--threads=50", f"--time={args.seconds}", "--report-interval=0",
                    f"--db-ps-mode={mode}"))
                match = re.search(r"queries:\s+(\d+)\s+\(([0-9.]+) per sec", output)
                errors = re.search(r"ignored errors:\s+(\d+)", output)
                qps = float(match.group(2)) if match and code == 0 else 0.0
                queries = int(match.group(1)) if match else 0
                cpu = f"{used / queries * 1e6:.1f} µs" if pid and queries else "-"
                print(f"ps-mode {mode}, {name}: {qps:.0f} q/s", file=sys.stderr)
                rows.append((name, qps, errors.group(1) if errors else "?", cpu, most, code, output))
            table(f"sysbench oltp_point_select, 50 threads, --db-ps-mode={mode}, {args.seconds} s per run; "
                  f"sysbench on CPU {LOAD_CPU}, HAProxy and attache on CPU {SERVER_CPU}; MariaDB unpinned",
                  rows, "queries/s")

        rows = []
        for name, port, pid in targets:
            (code, output, seconds), used, most = measured(pid, lambda: slap(port))
            rate = SLAP_QUERIES / seconds if code == 0 and seconds else 0.0
            cpu = f"{used / SLAP_QUERIES * 1e6:.1f} µs" if pid else "-"
            print(f"connection per query, {name}: {rate:.0f} q/s", file=sys.stderr)
            rows.append((name, rate, "0" if code == 0 else "?", cpu, most, code, output))
        table(f"A connection per query: mariadb-slap, 50 clients, --detach=1, {SLAP_QUERIES} x `SELECT 1`; "
              f"mariadb-slap on CPU {LOAD_CPU}, HAProxy and attache on CPU {SERVER_CPU}; MariaDB unpinned",
              rows, "queries (connections)/s")
    finally:
        stop(procs)
        subprocess.run(["mariadb", "--protocol=tcp", "-h", "127.0.0.1", "-u", "root", "-e",
                        f"DROP DATABASE IF EXISTS {SCHEMA}"], capture_output=True)


if __name__ == "__main__":
    main()
