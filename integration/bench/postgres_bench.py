#!/usr/bin/env python3
"""Drives the Postgres pooling benchmark (see postgres.sh and docs/benchmarks.md).

A scale-1 pgbench database (attache_bench) on the local Postgres 5432.
pgbench runs on CPU 0; PgBouncer and attache on CPU 1 (Postgres' own
processes are not pinned). Cases, each against direct, PgBouncer
(pool_mode=transaction) and attache (pool_mode: transaction, its other
settings at their defaults):
  - pgbench -S -c 50 -j 2 at pool sizes 5 and 20: TPS, and the proxy's CPU
    per transaction (utime + stime from /proc over the run);
  - pgbench -S -C -c 16 -j 2 (a new connection per transaction);
  - pgbench -S -M prepared -c 50 -j 2 (PgBouncer 1.18 has no prepared
    statements in transaction mode: its error is shown);
  - memory per idle client: 1000 clients that logged in and wait, RSS
    growth / 1000.
Everything listens on 127.0.0.1 and stops by itself.
"""
import argparse, os, pwd, re, socket, struct, subprocess, sys, tempfile, time

from bench_support import LOAD_CPU, SERVER_CPU, cpu_seconds, free_port, pinned, rss_kib, save_results, stop, wait_port

DATABASE = "attache_bench"


def pgbench(port, seconds, *extra):
    """(tps, failed, output) of one pgbench run on CPU 0."""
    argv = ["taskset", "-c", LOAD_CPU, "pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            "-n", "-T", str(seconds), *extra, DATABASE]
    run = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, PGSSLMODE="disable"))
    output = run.stdout + run.stderr
    # With -C pgbench counts the reconnections in ("including reconnection times").
    match = re.search(r"tps = ([0-9.]+) \((?:without initial connection time|including reconnection times)\)", output)
    tps = float(match.group(1)) if match and run.returncode == 0 else 0.0
    return tps, run.returncode != 0, output


def first_error(output):
    for line in output.splitlines():
        if "error" in line.lower():
            return line.strip()
    return output.strip().splitlines()[-1] if output.strip() else "failed"


def startup(port):
    """A logged-in, idle client socket (protocol 3, trust)."""
    sock = socket.create_connection(("127.0.0.1", port))
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0" + DATABASE.encode() + b"\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    data = b""
    while not data.endswith(b"Z\0\0\0\x05I"):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("closed during startup")
        data += chunk
    return sock


def idle_memory(pid, port, clients=1000):
    """RSS growth per idle logged-in client, in KiB."""
    warm = [startup(port) for _ in range(10)]
    before = rss_kib(pid)
    sockets = [startup(port) for _ in range(clients)]
    time.sleep(1)
    after = rss_kib(pid)
    for sock in sockets + warm:
        sock.close()
    return (after - before) / clients


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--attache", required=True)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    seconds = args.seconds
    procs = []
    workdir = tempfile.mkdtemp(prefix="attache-postgres-bench-")
    os.chmod(workdir, 0o755)
    try:
        subprocess.run(["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c",
                        f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)", "-c", f"CREATE DATABASE {DATABASE}"],
                       check=True, capture_output=True)
        subprocess.run(["pgbench", "-h", "127.0.0.1", "-U", "postgres", "-i", "-s", "1", "-q", DATABASE],
                       check=True, capture_output=True)
        ports = {}
        for size in (5, 20):
            ports[("pgbouncer", size)] = free_port()
            ports[("attache", size)] = free_port()
        admin_port = free_port()
        # PgBouncer refuses to run as root: it drops to the postgres user.
        postgres_user = pwd.getpwnam("postgres")
        for size in (5, 20):
            ini = os.path.join(workdir, f"pgbouncer-{size}.ini")
            with open(ini, "w") as f:
                f.write(f"""[databases]
* = host=127.0.0.1 port=5432
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {ports[('pgbouncer', size)]}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/users.txt
pool_mode = transaction
default_pool_size = {size}
max_client_conn = 2000
logfile = {workdir}/pgbouncer-{size}.log
pidfile = {workdir}/pgbouncer-{size}.pid
""")
        with open(os.path.join(workdir, "users.txt"), "w") as f:
            f.write('"postgres" ""\n')
        # PgBouncer (as postgres) writes its log and pid file there.
        for path in [workdir] + [os.path.join(workdir, name) for name in os.listdir(workdir)]:
            os.chown(path, postgres_user.pw_uid, postgres_user.pw_gid)
        for size in (5, 20):
            procs.append(pinned(SERVER_CPU, ["pgbouncer", "-u", "postgres", os.path.join(workdir, f"pgbouncer-{size}.ini")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        config = os.path.join(workdir, "attache.yaml")
        with open(config, "w") as f:
            f.write(f"log: {{level: warn}}\nadmin: {{listen: 127.0.0.1:{admin_port}}}\nlisteners:\n")
            for size in (5, 20):
                f.write(f"""  - name: pool{size}
    listen: 127.0.0.1:{ports[('attache', size)]}
    protocol: postgres
    upstream: postgres
    max_connections: 4096
    postgres: {{pool_size: {size}}}
""")
            f.write('upstreams:\n  postgres: {endpoints: ["127.0.0.1:5432"]}\n')
        attache = pinned(SERVER_CPU, [args.attache, "run", "-c", config], stderr=subprocess.DEVNULL)
        procs.append(attache)
        for port in ports.values():
            wait_port(port)
        pids = {("attache", size): attache.pid for size in (5, 20)}
        for size in (5, 20):
            with open(os.path.join(workdir, f"pgbouncer-{size}.pid")) as f:
                pids[("pgbouncer", size)] = int(f.read())

        rows, saved = [], []

        def measure(label, target, port, pid, *extra):
            before = cpu_seconds(pid) if pid else 0
            tps, failed, output = pgbench(port, seconds, *extra)
            used = cpu_seconds(pid) - before if pid else 0
            transactions = tps * seconds
            cpu = f"{used / transactions * 1e6:.1f} µs" if pid and transactions else "-"
            result = f"{tps:.0f}" if not failed else f"fails: {first_error(output)}"
            print(f"{label} {target}: {result}", file=sys.stderr)
            rows.append((label, target, tps, cpu, failed, output))
            return tps

        for size in (5, 20):
            label = f"pgbench -S -c 50 -j 2, pool {size}"
            values = {"direct": measure(label, "direct", 5432, None, "-S", "-c", "50", "-j", "2")}
            for target in ("pgbouncer", "attache"):
                values[target] = measure(label, target, ports[(target, size)], pids[(target, size)],
                                         "-S", "-c", "50", "-j", "2")
            saved.append({"case": f"Postgres pgbench -S, 50 clients, pool {size}", "unit": "TPS",
                          "baseline": "pgbouncer", "values": values})
        label = "pgbench -S -C -c 16 -j 2, pool 20"
        values = {"direct": measure(label, "direct", 5432, None, "-S", "-C", "-c", "16", "-j", "2")}
        for target in ("pgbouncer", "attache"):
            values[target] = measure(label, target, ports[(target, 20)], pids[(target, 20)],
                                     "-S", "-C", "-c", "16", "-j", "2")
        saved.append({"case": "Postgres pgbench -S -C (a connection per transaction), 16 clients",
                      "unit": "TPS", "baseline": "pgbouncer", "values": values})
        label = "pgbench -S -M prepared -c 50 -j 2, pool 20"
        values = {"direct": measure(label, "direct", 5432, None, "-S", "-M", "prepared", "-c", "50", "-j", "2")}
        for target in ("pgbouncer", "attache"):
            values[target] = measure(label, target, ports[(target, 20)], pids[(target, 20)],
                                     "-S", "-M", "prepared", "-c", "50", "-j", "2")
        saved.append({"case": "Postgres pgbench -S -M prepared, 50 clients, pool 20", "unit": "TPS",
                      "baseline": "direct", "values": values})

        memory = {target: idle_memory(pids[(target, 20)], ports[(target, 20)]) for target in ("pgbouncer", "attache")}

        print(f"\npgbench on CPU {LOAD_CPU} for {seconds} s per run; PgBouncer and attache on CPU {SERVER_CPU}; "
              "Postgres 15 unpinned\n")
        print("| case | target | TPS | vs PgBouncer | proxy CPU per transaction |")
        print("|---|---|---|---|---|")
        by_case = {}
        for label, target, tps, cpu, failed, output in rows:
            by_case.setdefault(label, {})[target] = tps
        for label, target, tps, cpu, failed, output in rows:
            bouncer = by_case[label].get("pgbouncer") or 0
            ratio = f"{tps / bouncer:.2f}x" if bouncer and not failed else "-"
            shown = f"{tps:.0f}" if not failed else f"fails: `{first_error(output)}`"
            print(f"| {label} | {target} | {shown} | {ratio} | {cpu} |")
        print("\n| memory per idle logged-in client | KiB |\n|---|---|")
        for target, kib in memory.items():
            print(f"| {target} | {kib:.1f} |")
        save_results("postgres", 1, saved, {})
    finally:
        stop(procs)
        subprocess.run(["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c",
                        f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"], capture_output=True)


if __name__ == "__main__":
    main()
