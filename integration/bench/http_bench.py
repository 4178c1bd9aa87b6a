#!/usr/bin/env python3
"""Drives the L7 benchmark (see http.sh and docs/benchmarks.md for the method).

The app server is nginx with one worker answering /small (2 bytes) and
/100k (100 KiB) from memory and disk. Targets, alternated within each round:
direct (wrk to the app); attache at its defaults (access log on, stdout to a
file); attache-nolog (a second listener of the same process, access log
off); haproxy (mode http, one thread, no log); nginx (proxy_pass, one
worker, upstream keepalive, access_log off) and nginx-log (a second server
of the same worker with `access_log FILE buffer=64k`). Each target runs wrk
with 64 and with 256 keep-alive connections on each path; then an HTTP/2
front door case: h2load -c 16 -m 10 with prior-knowledge h2c on /small to
attache, haproxy (`proto h2`) and nginx (`listen ... http2`), each speaking
HTTP/1.1 to the app, against the app's own h2c listener (direct-h2). Reported per case:
requests per second and its ratio to direct and to the faster peer (haproxy
or nginx, logs off), p50/p99 latency from wrk's --latency, and the proxy's
CPU time per request (utime+stime from /proc/PID/stat over the run); and,
measured first while the proxies are fresh, the RSS each gains per idle
keep-alive connection (500 connections that made one request each). With
--floor, the hyper floor (integration/bench/hyper_floor: hyper's server and
client connections and nothing else) is one more target, hyper-floor, in
every case but the idle memory (it keeps an upstream connection per client).
wrk runs on CPU 0; the app and every proxy on CPU 1. Everything listens on
127.0.0.1 and stops by itself.
"""
import argparse, os, re, statistics, subprocess, sys, tempfile

from bench_support import (LOAD_CPU, SERVER_CPU, cpu_seconds, free_port, idle_kib_per_connection, peak_rss_mib, pinned,
                           save_results, stop, wait_port)

CASES = [("/small", 64), ("/small", 256), ("/100k", 64), ("/100k", 256)]
CASE_NAMES = {"/small": "2 B responses", "/100k": "100 KiB responses"}


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, path, connections, seconds):
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t", "2", "-c", str(connections),
                          "-d", f"{seconds}s", "--latency", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed responses on port {port}:\n{out}")
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    return rps, requests, to_ms(*p50.groups()), to_ms(*p99.groups())


def with_cpu(pid, run):
    """run()'s result (its second item is the requests done) and the
    process's CPU time per request over it in µs, as a list: empty without
    a process to measure (direct)."""
    before = cpu_seconds(pid) if pid else 0
    result = run()
    return result, [(cpu_seconds(pid) - before) / result[1] * 1e6] if pid else []


H2_CLIENTS, H2_STREAMS = 16, 10


def h2load(port, seconds):
    """h2load with prior-knowledge h2c on /small: (requests per second,
    requests done). Any failed or non-2xx request fails the run."""
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "h2load", "-c", str(H2_CLIENTS), "-m", str(H2_STREAMS),
                          "-D", str(seconds), f"http://127.0.0.1:{port}/small"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done, succeeded, failed = (int(n) for n in
                               re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed",
                                         out).groups())
    # h2load may count the status of a response that arrives as the run
    # stops without counting the request as done: every status must be a
    # 2xx, the counts need not match.
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if failed or not statuses or any(int(count) for count in statuses.groups()[1:]) \
            or int(statuses.group(1)) < succeeded:
        raise RuntimeError(f"failed HTTP/2 requests on port {port}:\n{out}")
    return rps, done


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--attache", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--floor", help="the hyper-floor binary, measured as one more target")
    args = parser.parse_args()

    procs = []
    workdir = tempfile.mkdtemp(prefix="attache-http-bench-")
    try:
        with open(os.path.join(workdir, "100k"), "wb") as f:
            f.write(os.urandom(100 * 1024))
        # nginx's worker runs as an unprivileged user: it must reach the file.
        os.chmod(workdir, 0o755)
        os.chmod(os.path.join(workdir, "100k"), 0o644)
        (app_port, app_h2_port, nginx_proxy_port, nginx_log_port, nginx_h2_port, haproxy_port, haproxy_h2_port,
         attache_port, attache_nolog_port, admin_port, floor_port) = (free_port() for _ in range(11))
        nginx_conf = os.path.join(workdir, "nginx.conf")
        with open(nginx_conf, "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  upstream app {{ server 127.0.0.1:{app_port}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{app_port};
    location = /small {{ return 200 "ok"; }}
    location = /100k {{ root {workdir}; try_files /100k =404; }}
  }}
  server {{
    listen 127.0.0.1:{app_h2_port} http2;
    location = /small {{ return 200 "ok"; }}
  }}
}}
""")
        # The same proxying on both servers; only the access log differs.
        proxying = """    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP $remote_addr;
    }"""
        proxy_conf = os.path.join(workdir, "nginx-proxy.conf")
        with open(proxy_conf, "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
pid {workdir}/nginx-proxy.pid;
error_log {workdir}/nginx-proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {workdir}/proxy-body;
  proxy_temp_path {workdir}/proxy-temp;
  upstream app {{ server 127.0.0.1:{app_port}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{nginx_proxy_port};
{proxying}
  }}
  server {{
    listen 127.0.0.1:{nginx_h2_port} http2;
{proxying}
  }}
  server {{
    listen 127.0.0.1:{nginx_log_port};
    access_log {workdir}/nginx-access.log combined buffer=64k;
{proxying}
  }}
}}
""")
        haproxy_conf = os.path.join(workdir, "haproxy.cfg")
        with open(haproxy_conf, "w") as f:
            f.write(f"""global
  nbthread 1
  maxconn 8000
defaults
  mode http
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen front
  bind 127.0.0.1:{haproxy_port}
  server app 127.0.0.1:{app_port}
listen front_h2
  bind 127.0.0.1:{haproxy_h2_port} proto h2
  server app 127.0.0.1:{app_port}
""")
        # attache's config has a directory to itself: attache watches it,
        # and every file opened or written there (the app's 100 KiB file,
        # the logs) would wake its watcher.
        os.mkdir(os.path.join(workdir, "attache"))
        attache_conf = os.path.join(workdir, "attache", "attache.yaml")
        with open(attache_conf, "w") as f:
            f.write(f"""log: {{level: warn}}
admin: {{listen: 127.0.0.1:{admin_port}}}
listeners:
  - name: front
    listen: 127.0.0.1:{attache_port}
    protocol: http
    upstream: app
  - name: nolog
    listen: 127.0.0.1:{attache_nolog_port}
    protocol: http
    upstream: app
    http: {{access_log: {{enabled: false}}}}
upstreams:
  app: {{endpoints: ["127.0.0.1:{app_port}"]}}
""")
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(pinned(SERVER_CPU, ["nginx", "-c", nginx_conf], **quiet))
        wait_port(app_port)
        nginx_proxy = pinned(SERVER_CPU, ["nginx", "-c", proxy_conf], **quiet)
        haproxy = pinned(SERVER_CPU, ["haproxy", "-f", haproxy_conf, "-db"], **quiet)
        access_log = open(os.path.join(workdir, "attache-access.log"), "wb")
        attache = pinned(SERVER_CPU, [args.attache, "run", "-c", attache_conf], stdout=access_log,
                         stderr=subprocess.DEVNULL)
        procs += [nginx_proxy, haproxy, attache]
        for port in (nginx_proxy_port, nginx_log_port, nginx_h2_port, haproxy_port, haproxy_h2_port, attache_port,
                     attache_nolog_port, app_h2_port):
            wait_port(port)
        floor = None
        if args.floor:
            floor = pinned(SERVER_CPU, [args.floor, f"127.0.0.1:{floor_port}", f"127.0.0.1:{app_port}"], **quiet)
            procs.append(floor)
            wait_port(floor_port)
        # nginx's master process forks the worker that does the work.
        worker = int(subprocess.run(["pgrep", "-P", str(nginx_proxy.pid)], capture_output=True,
                                    text=True, check=True).stdout.split()[0])

        targets = {
            "direct": (app_port, None),
            "attache": (attache_port, attache.pid),
            "attache-nolog": (attache_nolog_port, attache.pid),
            "haproxy": (haproxy_port, haproxy.pid),
            "nginx": (nginx_proxy_port, worker),
            "nginx-log": (nginx_log_port, worker),
        }
        if floor:
            targets["hyper-floor"] = (floor_port, floor.pid)
        # HTTP/2 front door: h2c with prior knowledge from h2load, HTTP/1.1 to
        # the app behind (direct-h2: the app's own h2c listener).
        h2_targets = {
            "direct-h2": (app_h2_port, None),
            "attache": (attache_port, attache.pid),
            "attache-nolog": (attache_nolog_port, attache.pid),
            "haproxy": (haproxy_h2_port, haproxy.pid),
            "nginx": (nginx_h2_port, worker),
        }
        if floor:
            h2_targets["hyper-floor"] = (floor_port, floor.pid)
        h2_results = {name: {"rps": [], "cpu_us": []} for name in h2_targets}
        # First, while every proxy is fresh: after the load, a pool
        # allocator hands idle connections memory the load already touched.
        idle = {name: idle_kib_per_connection(port, pid, b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n", b"ok")
                for name, (port, pid) in targets.items() if name in ("attache", "haproxy", "nginx")}
        results = {(name, case): {"rps": [], "p50": [], "p99": [], "cpu_us": []}
                   for name in targets for case in CASES}
        for round_number in range(args.rounds):
            for case in CASES:
                for name, (port, pid) in targets.items():
                    (rps, requests, p50, p99), cpu_us = with_cpu(pid, lambda: wrk(port, *case, args.seconds))
                    r = results[(name, case)]
                    r["rps"].append(rps); r["p50"].append(p50); r["p99"].append(p99)
                    r["cpu_us"] += cpu_us
                    print(f"round {round_number + 1} {case[0]} -c{case[1]} {name}: {rps:.0f} req/s, "
                          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", file=sys.stderr)
            for name, (port, pid) in h2_targets.items():
                (rps, requests), cpu_us = with_cpu(pid, lambda: h2load(port, args.seconds))
                h2_results[name]["rps"].append(rps)
                h2_results[name]["cpu_us"] += cpu_us
                print(f"round {round_number + 1} h2c {name}: {rps:.0f} req/s", file=sys.stderr)

        med = lambda values: statistics.median(values) if values else float("nan")
        print(f"\nrounds: {args.rounds} x {args.seconds} s; medians; wrk on CPU {LOAD_CPU}, "
              f"app + proxy on CPU {SERVER_CPU}\n")
        print("| case | target | req/s | vs direct | vs faster peer | p50 ms | p99 ms | proxy CPU µs/req |")
        print("|---|---|---|---|---|---|---|---|")
        for case in CASES:
            direct = med(results[("direct", case)]["rps"])
            peer = max(med(results[("haproxy", case)]["rps"]), med(results[("nginx", case)]["rps"]))
            for name in targets:
                r = results[(name, case)]
                rps = med(r["rps"])
                cpu = f"{med(r['cpu_us']):.1f}" if r["cpu_us"] else "-"
                print(f"| {case[0]} -c{case[1]} | {name} | {rps:.0f} | {rps / direct:.2f}x | {rps / peer:.2f}x "
                      f"| {med(r['p50']):.2f} | {med(r['p99']):.2f} | {cpu} |")
        direct_h2 = med(h2_results["direct-h2"]["rps"])
        peer_h2 = max(med(h2_results["haproxy"]["rps"]), med(h2_results["nginx"]["rps"]))
        print(f"\n| HTTP/2 front door (h2load -c {H2_CLIENTS} -m {H2_STREAMS}, /small) | req/s | vs direct h2 "
              "| vs faster peer | proxy CPU µs/req |")
        print("|---|---|---|---|---|")
        for name, r in h2_results.items():
            rps = med(r["rps"])
            cpu = f"{med(r['cpu_us']):.1f}" if r["cpu_us"] else "-"
            print(f"| {name} | {rps:.0f} | {rps / direct_h2:.2f}x | {rps / peer_h2:.2f}x | {cpu} |")
        print("\n| memory per idle keep-alive connection | " + " | ".join(idle) + " |")
        print("|---|" + "---|" * len(idle))
        print("| KiB of RSS | " + " | ".join(f"{kib:.1f}" for kib in idle.values()) + " |")
        save_results("http", args.rounds, [
            {"case": f"HTTP/1.1, {CASE_NAMES[case[0]]}, {case[1]} connections (wrk)", "unit": "req/s", "baseline": "direct",
             "values": {name: med(results[(name, case)]["rps"]) for name in targets}}
            for case in CASES
        ] + [
            {"case": f"HTTP/2 front door (h2c), 2 B responses, {H2_CLIENTS} connections x {H2_STREAMS} streams (h2load)",
             "unit": "req/s", "baseline": "direct-h2",
             "values": {name: med(r["rps"]) for name, r in h2_results.items()}}
        ], {"peak RSS (all cases, up to 256 connections)": peak_rss_mib(attache.pid),
            "per idle keep-alive connection (500 held)": idle["attache"] / 1024})
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
