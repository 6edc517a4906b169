#!/usr/bin/env python3
"""Side-by-side reverse-proxy / API-gateway benchmark on one small machine.

Layout (2 cores): the proxy under test is pinned alone on CORE_PROXY; the load
generator and the upstream share CORE_LOAD.  The "direct" system sends the same
load straight at the upstream, so its req/s is the ceiling any proxy can reach
in this layout (a proxy that costs nothing).  Systems are interleaved inside
every round (rotating order) and each run records the 1-minute load average,
KVM steal and CPU that none of our processes used, so noisy runs are visible.

Everything listens on 127.0.0.1, ports 19000-19999; every process is started
here, pinned with taskset, and stopped by its own process-group id at exit.
Run through run.sh; `harness.py --help` lists the knobs.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
API_KEY = "bench-key-123"
OTHER_KEYS = ["bench-key-456", "bench-key-789"]
HOST = "127.0.0.1"
UPSTREAM_PORT = 19001  # plain HTTP/1.1
UPSTREAM_TLS_PORT = 19002  # TLS, ALPN h2 + http/1.1 (direct baseline for tls/h2)
SMALL_BODY = json.dumps(
    {"id": 12345, "name": "gantry-bench", "status": "ok", "items": [1, 2, 3],
     "message": "hello from upstream"}, separators=(",", ":"))
# ~10 KB JSON array of small records
LARGE_BODY = json.dumps(
    [{"id": i, "sku": f"SKU-{i:06d}", "price": 1000 + i, "tags": ["a", "b"]}
     for i in range(170)], separators=(",", ":"))
PATH_SMALL = "/json"
PATH_LARGE = "/json10k"

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# --------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    name: str
    instance: str  # which proxy instance serves it: plain | policies | tls
    path: str
    tool: str  # wrk | h2load | oha
    tls: bool
    doc: str


SCENARIOS = {
    "plain": Scenario("plain", "plain", PATH_SMALL, "wrk", False,
                      "HTTP/1.1 keep-alive, 96 B JSON, plain reverse proxy"),
    "policies": Scenario("policies", "policies", PATH_SMALL, "wrk", False,
                         "HTTP/1.1, 96 B, API-key check + never-firing rate limit + file access log"),
    "plain10k": Scenario("plain10k", "plain", PATH_LARGE, "wrk", False,
                         "HTTP/1.1 keep-alive, 10 KB JSON, plain reverse proxy"),
    "tls": Scenario("tls", "tls", PATH_SMALL, "wrk", True,
                    "HTTPS/1.1 keep-alive (TLS terminated at the proxy, plain upstream), 96 B"),
    "h2": Scenario("h2", "tls", PATH_SMALL, "h2load", True,
                   "HTTP/2 over TLS (h2load), 96 B, HTTP/1.1 to upstream"),
    "lat": Scenario("lat", "plain", PATH_SMALL, "oha", False,
                    "fixed offered rate (oha -q, latency-corrected), plain proxy: latency at equal load"),
    "latpol": Scenario("latpol", "policies", PATH_SMALL, "oha", False,
                       "fixed offered rate, policies instance"),
}
DEFAULT_SCENARIOS = "plain,policies,plain10k,tls,h2,lat,latpol"


# --------------------------------------------------------------------------
# process handling (only ever signals process groups this script created)
# --------------------------------------------------------------------------
class Managed:
    def __init__(self, name: str, argv: list[str], cpu: str, logdir: Path,
                 env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.argv = ["taskset", "-c", cpu] + argv
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.log = open(logdir / f"{name}.out", "wb")
        self.popen = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                      env=full_env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self):
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)  # our own session/group id == pid
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=8)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=5)
        self.log.close()


# --------------------------------------------------------------------------
# /proc sampling
# --------------------------------------------------------------------------
def _ppid_map() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                out[int(d)] = int(s[s.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    return out


def tree(pid: int) -> list[int]:
    pp = _ppid_map()
    res, frontier = [pid], [pid]
    while frontier:
        nxt = [c for c, p in pp.items() if p in frontier]
        res += nxt
        frontier = nxt
    return res


def cpu_split(pids: list[int]) -> tuple[int, int]:
    """(user, system) clock ticks summed over the processes (all their threads)."""
    usr = sys_ = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            fields = s[s.rindex(")") + 2:].split()
            usr += int(fields[11])
            sys_ += int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return usr, sys_


def cpu_ticks(pids: list[int]) -> int:
    return sum(cpu_split(pids))


def mem_kb(pids: list[int]) -> tuple[int, int]:
    rss = hwm = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            pass
    return rss, hwm


def proc_stat() -> dict[str, list[int]]:
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                parts = line.split()
                out[parts[0]] = [int(x) for x in parts[1:]]
    return out


def busy_and_steal(a: list[int], b: list[int]) -> tuple[int, int, int]:
    d = [y - x for x, y in zip(a, b)]
    # user nice system idle iowait irq softirq steal guest guest_nice
    total = sum(d[:8])
    idle = d[3] + d[4]
    steal = d[7]
    return total - idle - steal, steal, total


def core_speed(core: str, seconds: float = 0.1) -> float:
    """Busy-loop iterations per microsecond on one core: a cheap index of how fast that
    vCPU runs right now (on shared hosts it moves by tens of percent within seconds)."""
    prev = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(core)})
    try:
        n, t0 = 0, time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            n += 1
        return n / ((time.perf_counter() - t0) * 1e6)
    finally:
        os.sched_setaffinity(0, prev)


def wait_quiet(max_busy: float, max_wait: float) -> tuple[float, float]:
    """Between runs nothing of ours is busy, so busy CPU is someone else's. Wait (bounded)
    until it drops below max_busy cores over a 1.5 s window; return (waited s, busy cores)."""
    t0 = time.time()
    window = 1.5  # long enough not to mistake the gap between two compiler jobs for quiet
    while True:
        a = proc_stat()["cpu"]
        time.sleep(window)
        b = proc_stat()["cpu"]
        busy, _, _ = busy_and_steal(a, b)
        cores = busy / CLK_TCK / window
        if cores <= max_busy or time.time() - t0 >= max_wait:
            return time.time() - t0, cores
        time.sleep(0.5)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def wait_port(port: int, timeout: float = 20.0, proc: "Managed | None" = None) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and not proc.alive():
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def http_get(port: int, path: str, tls: bool, key: str | None = API_KEY) -> tuple[int, bytes]:
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(HOST, port, timeout=5, context=ctx)
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
    headers = {"X-Api-Key": key} if key else {}
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(v: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v.strip())
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def parse_wrk(out: str) -> dict:
    r = {"rps": float("nan"), "p50_ms": float("nan"), "p90_ms": float("nan"),
         "p99_ms": float("nan"), "non2xx": 0, "sock_err": 0, "requests": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m:
            r[key] = _ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["sock_err"] = sum(int(x) for x in m.groups())
    m = re.search(r"(\d+) requests in", out)
    if m:
        r["requests"] = int(m.group(1))
    return r


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def parse_h2load(out: str, logfile: Path, skip_s: float) -> dict:
    r = {"rps": float("nan"), "p50_ms": float("nan"), "p90_ms": float("nan"),
         "p99_ms": float("nan"), "non2xx": 0, "sock_err": 0, "requests": 0}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if m:
        r["requests"] = int(m.group(2))
        r["sock_err"] = int(m.group(5))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["non2xx"] = int(m.group(3)) + int(m.group(4))
    lat = []
    try:
        # log line: <start time us since epoch>\t<status>\t<duration us>
        rows = [ln.split("\t") for ln in logfile.read_text().splitlines() if ln]
        if rows:
            t0 = min(int(x[0]) for x in rows)
            lat = sorted(int(x[2]) / 1000.0 for x in rows if int(x[0]) - t0 >= skip_s * 1e6)
    except (OSError, ValueError, IndexError):
        pass
    if lat:
        r["p50_ms"], r["p90_ms"], r["p99_ms"] = (percentile(lat, q) for q in (0.5, 0.9, 0.99))
    return r


def parse_oha(out: str) -> dict:
    r = {"rps": float("nan"), "p50_ms": float("nan"), "p90_ms": float("nan"),
         "p99_ms": float("nan"), "p999_ms": float("nan"), "non2xx": 0, "sock_err": 0,
         "requests": 0}
    try:
        j = json.loads(out[out.index("{"):])
    except (ValueError, json.JSONDecodeError):
        return r
    s = j.get("summary", {})
    r["rps"] = s.get("requestsPerSec", float("nan"))
    lp = j.get("latencyPercentiles", {})
    for k, key in (("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms")):
        if lp.get(k) is not None:
            r[key] = lp[k] * 1000.0
    codes = j.get("statusCodeDistribution", {})
    r["requests"] = sum(int(v) for v in codes.values())
    r["non2xx"] = sum(int(v) for k, v in codes.items() if not k.startswith("2"))
    # requests still in flight when -z expires are reported as aborted: not failures
    r["sock_err"] = sum(int(v) for k, v in j.get("errorDistribution", {}).items()
                        if "deadline" not in k)
    return r


# --------------------------------------------------------------------------
# configuration generators: one process per (system, instance)
# --------------------------------------------------------------------------
@dataclass
class Env:
    run: Path
    cert: Path
    key: Path
    pem: Path  # cert + key (haproxy)

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    def conf(self, name: str, text: str) -> Path:
        p = self.run / "configs" / name
        p.write_text(text)
        return p


def nginx_common(env: Env, tag: str) -> str:
    t = env.run / "tmp" / tag
    t.mkdir(parents=True, exist_ok=True)
    os.chmod(t, 0o777)
    return f"""pid {env.run}/{tag}.pid;
error_log {env.logs}/{tag}-error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
"""


def nginx_http_common(env: Env, tag: str) -> str:
    t = env.run / "tmp" / tag
    return f"""  server_tokens off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path {t}/body; proxy_temp_path {t}/proxy;
  fastcgi_temp_path {t}/fcgi; uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;
"""


def upstream_conf(env: Env) -> Path:
    # nginx caps a config token at 4 KB, so the 10 KB body is a file (page cache + open_file_cache)
    body = env.run / "body10k.json"
    body.write_text(LARGE_BODY)
    os.chmod(body, 0o644)
    locs = f"""    location = {PATH_SMALL} {{ return 200 '{SMALL_BODY}'; }}
    location = {PATH_LARGE} {{ alias {body}; }}
"""
    text = f"""# Upstream: fixed JSON bodies, 1 worker, no logging.
worker_processes 1;
{nginx_common(env, 'upstream')}
http {{
  access_log off;
  default_type application/json;
  types {{ }}
  sendfile on;
  etag off;
  open_file_cache max=16 inactive=600s;
  open_file_cache_valid 600s;
{nginx_http_common(env, 'upstream')}
  server {{
    listen {HOST}:{UPSTREAM_PORT} backlog=4096;
{locs}  }}
  server {{
    listen {HOST}:{UPSTREAM_TLS_PORT} ssl http2 backlog=4096;
    ssl_certificate {env.cert}; ssl_certificate_key {env.key};
    ssl_protocols TLSv1.2 TLSv1.3;
{locs}  }}
}}
"""
    return env.conf("upstream-nginx.conf", text)


def nginx_conf(env: Env, inst: str, port: int) -> Path:
    keys = "\n".join(f'    "{k}" 1;' for k in [API_KEY] + OTHER_KEYS)
    proxy = f"""      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"""
    if inst == "plain":
        server = f"""  server {{
    listen {HOST}:{port} backlog=4096;
    access_log off;
    location / {{
{proxy}
    }}
  }}"""
    elif inst == "policies":
        server = f"""  server {{
    listen {HOST}:{port} backlog=4096;
    # access log: default 'combined' format, unbuffered (one write per request)
    access_log {env.logs}/nginx-access.log combined;
    location / {{
      # API key: exact match of X-Api-Key against a static map
      if ($api_key_valid = 0) {{ return 401; }}
      # rate limit far above any reachable rate; burst covers many requests per ms
      limit_req zone=perip burst=1000000 nodelay;
      limit_req_status 429;
{proxy}
    }}
  }}"""
    else:  # tls
        server = f"""  server {{
    listen {HOST}:{port} ssl http2 backlog=4096;
    ssl_certificate {env.cert}; ssl_certificate_key {env.key};
    ssl_protocols TLSv1.2 TLSv1.3;
    access_log off;
    location / {{
{proxy}
    }}
  }}"""
    text = f"""worker_processes 1;
{nginx_common(env, 'nginx-' + inst)}
http {{
  access_log off;
{nginx_http_common(env, 'nginx-' + inst)}
  upstream backend {{
    server {HOST}:{UPSTREAM_PORT};
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }}
  map $http_x_api_key $api_key_valid {{
    default 0;
{keys}
  }}
  limit_req_zone $binary_remote_addr zone=perip:10m rate=1000000r/s;
{server}
}}
"""
    return env.conf(f"nginx-{inst}.conf", text)


def nginx_lua_conf(env: Env, port: int) -> Path:
    keys = ", ".join(f'["{k}"] = true' for k in [API_KEY] + OTHER_KEYS)
    text = f"""load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;
{nginx_common(env, 'nginxlua-policies')}
http {{
  access_log off;
{nginx_http_common(env, 'nginxlua-policies')}
  upstream backend {{
    server {HOST}:{UPSTREAM_PORT};
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }}
  # Lua policies in the access phase, the way OpenResty gateways (Kong, APISIX) run plugins:
  # key-auth against a Lua table, fixed-window limit-count in a shared dict (like APISIX
  # limit-count, local policy), then nginx's own access log.
  lua_shared_dict limit_count 10m;
  init_by_lua_block {{
    api_keys = {{ {keys} }}
  }}
  server {{
    listen {HOST}:{port} backlog=4096;
    access_log {env.logs}/nginxlua-access.log combined;
    location / {{
      access_by_lua_block {{
        local key = ngx.var.http_x_api_key
        if not key or not api_keys[key] then return ngx.exit(401) end
        local window = math.floor(ngx.time() / 60)
        local n = ngx.shared.limit_count:incr(ngx.var.binary_remote_addr .. window, 1, 0, 60)
        if n and n > 2000000000000 then return ngx.exit(429) end
      }}
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"""
    return env.conf("nginxlua-policies.conf", text)


def haproxy_conf(env: Env, inst: str, port: int) -> Path:
    keys = " ".join([API_KEY] + OTHER_KEYS)
    if inst == "plain":
        fe = f"""frontend fe
  bind {HOST}:{port}
  default_backend be_up"""
        glog = ""
    elif inst == "policies":
        fe = f"""frontend fe
  bind {HOST}:{port}
  log global
  option httplog
  # API key: exact string match on the header
  acl api_key_valid req.hdr(x-api-key) -m str {keys}
  http-request deny deny_status 401 if !api_key_valid
  # rate limit: per-source request rate in a stick table, threshold never reached
  http-request track-sc0 src table st_rate
  http-request deny deny_status 429 if {{ sc_http_req_rate(0,st_rate) gt 1000000000 }}
  default_backend be_up

backend st_rate
  stick-table type ip size 100k expire 60s store http_req_rate(60s)"""
        # HAProxy cannot write files itself: raw log lines go to stdout, which run.sh points at a file.
        glog = "  log stdout format raw local0 info\n"
    else:
        fe = f"""frontend fe
  bind {HOST}:{port} ssl crt {env.pem} alpn h2,http/1.1
  default_backend be_up"""
        glog = ""
    text = f"""global
  nbthread 1
  maxconn 8000
{glog}
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 300s
  option forwardfor
  http-reuse always

{fe}

backend be_up
  server up1 {HOST}:{UPSTREAM_PORT}
"""
    return env.conf(f"haproxy-{inst}.cfg", text)


def caddy_conf(env: Env, inst: str, port: int) -> Path:
    rp = f"""  reverse_proxy {HOST}:{UPSTREAM_PORT} {{
    transport http {{
      keepalive 300s
      keepalive_idle_conns 1024
      keepalive_idle_conns_per_host 1024
    }}
  }}"""
    if inst == "plain":
        site = f"""http://:{port} {{
  bind {HOST}
{rp}
}}"""
    elif inst == "policies":
        site = f"""http://:{port} {{
  bind {HOST}
  # access log: Caddy's structured JSON logger to a file
  log {{
    output file {env.logs}/caddy-access.log {{
      roll_disabled
    }}
  }}
  # API key: request matcher + static 401; rate limiting needs a third-party plugin: not enabled
  @nokey not header X-Api-Key {API_KEY}
  respond @nokey 401
{rp}
}}"""
    else:
        site = f"""https://:{port} {{
  bind {HOST}
  tls {env.cert} {env.key}
{rp}
}}"""
    text = f"""{{
  admin off
  auto_https off
  log {{
    level ERROR
  }}
}}

{site}
"""
    return env.conf(f"caddy-{inst}.Caddyfile", text)


def traefik_conf(env: Env, inst: str, port: int) -> Path:
    dyn = env.run / "configs" / f"traefik-{inst}-dynamic.yml"
    svc = f"""  services:
    up:
      loadBalancer:
        passHostHeader: true
        servers:
          - url: "http://{HOST}:{UPSTREAM_PORT}"
"""
    if inst == "plain":
        d = f"""http:
  routers:
    r:
      entryPoints: [web]
      rule: "PathPrefix(`/`)"
      service: up
{svc}"""
    elif inst == "policies":
        d = f"""http:
  routers:
    r:
      entryPoints: [web]
      # API key: router matcher on the header (plugin-less Traefik has no key-auth middleware);
      # requests without the key match no router and get 404
      rule: "PathPrefix(`/`) && Header(`X-Api-Key`, `{API_KEY}`)"
      service: up
      middlewares: [rl]
  middlewares:
    rl:
      rateLimit:
        average: 1000000000
        burst: 1000000000
        period: 1s
{svc}"""
    else:
        d = f"""http:
  routers:
    r:
      entryPoints: [web]
      rule: "PathPrefix(`/`)"
      service: up
      tls: {{}}
{svc}tls:
  certificates:
    - certFile: {env.cert}
      keyFile: {env.key}
  stores:
    default:
      defaultCertificate:
        certFile: {env.cert}
        keyFile: {env.key}
"""
    dyn.write_text(d)
    access = (f"""accessLog:
  filePath: {env.logs}/traefik-access.log
""" if inst == "policies" else "")
    text = f"""global:
  checkNewVersion: false
  sendAnonymousUsage: false
entryPoints:
  web:
    address: "{HOST}:{port}"
providers:
  file:
    filename: {dyn}
    watch: false
serversTransport:
  maxIdleConnsPerHost: 1024
log:
  level: ERROR
{access}"""
    return env.conf(f"traefik-{inst}.yml", text)


# --------------------------------------------------------------------------
# systems
# --------------------------------------------------------------------------
@dataclass
class System:
    name: str
    ports: dict[str, int]  # instance -> port
    starters: dict[str, object] = field(default_factory=dict)  # instance -> callable(env, logdir) -> Managed
    procs: dict[str, Managed] = field(default_factory=dict)
    note: str = ""

    def supports(self, sc: Scenario) -> bool:
        return sc.instance in self.ports


def which(name: str) -> str | None:
    return shutil.which(name)


def traefik_bin() -> str | None:
    p = shutil.which("traefik")
    if p and "shims" in p and shutil.which("pyenv"):
        try:
            p = subprocess.check_output(["pyenv", "which", "traefik"], text=True).strip()
        except subprocess.CalledProcessError:
            pass
    return p


def build_systems(args, env: Env) -> list[System]:
    cpu = args.proxy_cpu
    go_env = {"GOMAXPROCS": "1", "HOME": str(env.run), "XDG_DATA_HOME": str(env.run / "xdg"),
              "XDG_CONFIG_HOME": str(env.run / "xdg")}
    systems: list[System] = []
    want = set(args.systems.split(","))

    def mk(name, cmd_fn, extra_env=None):
        def start(inst, port):
            argv = cmd_fn(inst, port)
            return Managed(f"{name}-{inst}", argv, cpu, env.logs, env=extra_env)
        return start

    if "nginx" in want:
        s = System("nginx", {"plain": 19010, "policies": 19011, "tls": 19012},
                   note="1 worker, upstream keepalive 256")
        st = mk("nginx", lambda i, p: ["nginx", "-e", str(env.logs / f"nginx-{i}-startup.log"),
                                        "-c", str(nginx_conf(env, i, p)), "-g", "daemon off;"])
        s.starters = {i: st for i in s.ports}
        systems.append(s)
    if "haproxy" in want:
        s = System("haproxy", {"plain": 19020, "policies": 19021, "tls": 19022},
                   note="nbthread 1, http-reuse always")
        st = mk("haproxy", lambda i, p: ["haproxy", "-db", "-f", str(haproxy_conf(env, i, p))])
        s.starters = {i: st for i in s.ports}
        systems.append(s)
    if "caddy" in want:
        s = System("caddy", {"plain": 19030, "policies": 19031, "tls": 19032},
                   note="GOMAXPROCS=1; no rate limit (needs plugin)")
        st = mk("caddy", lambda i, p: ["caddy", "run", "--adapter", "caddyfile", "--config",
                                        str(caddy_conf(env, i, p))], go_env)
        s.starters = {i: st for i in s.ports}
        systems.append(s)
    if "traefik" in want and traefik_bin():
        tb = traefik_bin()
        s = System("traefik", {"plain": 19040, "policies": 19041, "tls": 19042},
                   note="GOMAXPROCS=1, file provider")
        st = mk("traefik", lambda i, p: [tb, f"--configFile={traefik_conf(env, i, p)}"], go_env)
        s.starters = {i: st for i in s.ports}
        systems.append(s)
    if "nginxlua" in want and Path("/usr/lib/nginx/modules/ngx_http_lua_module.so").exists():
        s = System("nginx+lua", {"policies": 19061},
                   note="policies as Lua in access phase (OpenResty-style)")
        st = mk("nginxlua", lambda i, p: ["nginx", "-e", str(env.logs / "nginxlua-startup.log"),
                                           "-c", str(nginx_lua_conf(env, p)), "-g", "daemon off;"])
        s.starters = {"policies": st}
        systems.append(s)
    gw_cmd = os.environ.get("GATEWAY_CMD")
    if gw_cmd:
        systems.append(gateway_system(args, env, gw_cmd, go_env))
    return systems


def gateway_system(args, env: Env, gw_cmd: str, go_env: dict) -> System:
    """The system under development, plugged in through environment variables.

    GATEWAY_CMD            command line (run via bash, exec'd so its PID is the gateway's)
    GATEWAY_PORT           port of the plain reverse-proxy listener (required)
    GATEWAY_PORT_POLICIES  port of the listener with key-auth + rate limit + access log
    GATEWAY_PORT_TLS       port of the TLS listener (h1 + h2 via ALPN)
    GATEWAY_CMD_POLICIES / GATEWAY_CMD_TLS  separate commands for those listeners; without
                           them one GATEWAY_CMD process is expected to serve every port given
    GATEWAY_NAME           label in the tables (default: gateway)
    The command line may use {upstream} {api_key} {access_log} {cert} {key} {run_dir}
    {port} {port_policies} {port_tls}; the same values are exported as BENCH_* variables.
    """
    name = os.environ.get("GATEWAY_NAME", "gateway")
    ports = {"plain": int(os.environ["GATEWAY_PORT"])}
    if os.environ.get("GATEWAY_PORT_POLICIES"):
        ports["policies"] = int(os.environ["GATEWAY_PORT_POLICIES"])
    if os.environ.get("GATEWAY_PORT_TLS"):
        ports["tls"] = int(os.environ["GATEWAY_PORT_TLS"])
    for p in ports.values():
        if not 19000 <= p <= 19999:
            sys.exit(f"gateway port {p} outside 19000-19999")
    values = {
        "upstream": f"{HOST}:{UPSTREAM_PORT}", "api_key": API_KEY,
        "access_log": str(env.logs / f"{name}-access.log"), "cert": str(env.cert),
        "key": str(env.key), "run_dir": str(env.run), "port": ports["plain"],
        "port_policies": ports.get("policies", ""), "port_tls": ports.get("tls", ""),
    }
    genv = dict(go_env)
    genv.update({f"BENCH_{k.upper()}": str(v) for k, v in values.items()})
    genv["BENCH_API_KEYS"] = ",".join([API_KEY] + OTHER_KEYS)
    s = System(name, ports, note="GATEWAY_CMD")
    cmds = {"plain": gw_cmd, "policies": os.environ.get("GATEWAY_CMD_POLICIES"),
            "tls": os.environ.get("GATEWAY_CMD_TLS")}
    started = {}

    def starter(inst, port):
        cmd = cmds.get(inst) or gw_cmd
        if cmd in started:  # one process serves several listeners
            return started[cmd]
        m = Managed(f"{name}-{inst}", ["bash", "-c", "exec " + cmd.format(**values)],
                    args.proxy_cpu, env.logs, env=genv)
        started[cmd] = m
        return m
    s.starters = {i: starter for i in ports}
    return s


def direct_system() -> System:
    return System("direct", {"plain": UPSTREAM_PORT, "policies": UPSTREAM_PORT,
                             "tls": UPSTREAM_TLS_PORT},
                  note="load straight at the upstream (ceiling of this layout)")


# --------------------------------------------------------------------------
# load generators
# --------------------------------------------------------------------------
def run_load(args, sc: Scenario, port: int, dur: float, rawfile: Path | None) -> tuple[dict, float]:
    scheme = "https" if sc.tls else "http"
    url = f"{scheme}://{HOST}:{port}{sc.path}"
    hdr = f"X-Api-Key: {API_KEY}"
    base = ["taskset", "-c", args.load_cpu]
    logfile = None
    if sc.tool == "wrk":
        argv = base + ["wrk", "-t1", f"-c{args.conns}", f"-d{int(dur)}s", "--latency",
                       "-H", hdr, url]
    elif sc.tool == "h2load":
        logfile = (rawfile.with_suffix(".h2log") if rawfile else Path(os.devnull))
        streams = max(1, args.conns // args.h2_conns)
        argv = base + ["h2load", "-t1", f"-c{args.h2_conns}", f"-m{streams}", f"-D{int(dur)}",
                       "--warm-up-time=1", "-H", hdr, f"--log-file={logfile}", url]
    else:
        argv = base + [args.oha, "-z", f"{int(dur)}s", "-q", str(args.lat_rate), "-c",
                       str(args.conns), "--latency-correction", "--no-tui", "--output-format",
                       "json", "-H", hdr, url]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=dur + 30)
        out = p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = f"TIMEOUT {e}"
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    gen_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if rawfile:
        rawfile.write_text(" ".join(shlex.quote(a) for a in argv) + "\n\n" + out)
    if sc.tool == "wrk":
        res = parse_wrk(out)
    elif sc.tool == "h2load":
        res = parse_h2load(out, logfile, 0)
        if rawfile and logfile.exists():
            logfile.unlink()  # percentiles extracted; the per-request log is large
    else:
        res = parse_oha(out)
    return res, gen_cpu


def measure(args, sys_: System, sc: Scenario, upstream: Managed, env: Env, tag: str) -> dict:
    port = sys_.ports[sc.instance]
    proc = None if sys_.name == "direct" else sys_.procs[sc.instance]
    quiet_wait, pre_busy = wait_quiet(args.quiet_busy, args.quiet_wait)
    # short warm-up (connection pools, Go runtime) outside the measured window
    run_load(args, sc, port, args.warmup, None)
    ppids = tree(proc.pid) if proc else []
    upids = tree(upstream.pid)
    sp0 = (core_speed(args.load_cpu), core_speed(args.proxy_cpu))
    c0p, c0u, st0 = cpu_ticks(ppids), cpu_ticks(upids), proc_stat()
    s0 = cpu_split(ppids)
    la0 = loadavg()
    t0 = time.time()
    res, gen_cpu = run_load(args, sc, port, args.duration, env.run / "raw" / f"{tag}.txt")
    wall = time.time() - t0
    c1p, c1u, st1 = cpu_ticks(ppids), cpu_ticks(upids), proc_stat()
    s1 = cpu_split(ppids)
    la1 = loadavg()
    sp1 = (core_speed(args.load_cpu), core_speed(args.proxy_cpu))
    rss, hwm = mem_kb(ppids) if proc else (0, 0)
    prox_cpu = (c1p - c0p) / CLK_TCK
    up_cpu = (c1u - c0u) / CLK_TCK
    busy, steal, total = busy_and_steal(st0["cpu"], st1["cpu"])
    ours = prox_cpu + up_cpu + gen_cpu
    res.update({
        "system": sys_.name, "scenario": sc.name, "wall_s": round(wall, 2),
        "proxy_cpu": prox_cpu / wall if proc else float("nan"),
        # share of the proxy's CPU spent in the kernel (sockets, loopback TCP, epoll)
        "proxy_sys_share": ((s1[1] - s0[1]) / max(1, sum(s1) - sum(s0))) if proc else float("nan"),
        "upstream_cpu": up_cpu / wall, "gen_cpu": gen_cpu / wall,
        "foreign_cpu": max(0.0, busy / CLK_TCK - ours) / wall,
        "steal_cpu": (steal / CLK_TCK) / wall,
        "rss_mb": rss / 1024, "hwm_mb": hwm / 1024,
        "load_start": la0, "load_end": la1, "time": dt.datetime.now().strftime("%H:%M:%S"),
        "quiet_wait_s": round(quiet_wait, 1), "pre_busy_cores": round(pre_busy, 2),
        "speed_load_pre": sp0[0], "speed_proxy_pre": sp0[1],
        "speed_load_post": sp1[0], "speed_proxy_post": sp1[1],
        # a run is "steady" when neither core changed speed by more than 15% across it
        "steady": all(abs(b - a) / a < 0.15 for a, b in zip(sp0, sp1)),
    })
    for k, a in (("core0_busy", "cpu0"), ("core1_busy", "cpu1")):
        if a in st0:
            b, _, _ = busy_and_steal(st0[a], st1[a])
            res[k] = (b / CLK_TCK) / wall
    if proc and res["proxy_cpu"] > 0:
        res["rps_per_core"] = res["rps"] / res["proxy_cpu"]
    else:
        res["rps_per_core"] = float("nan")
    return res


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
def med(vals):
    v = [x for x in vals if x == x]  # drop NaN
    return statistics.median(v) if v else float("nan")


def load_range(x: list[dict]) -> str:
    vals = [float(r[k].split()[0]) for r in x for k in ("load_start", "load_end")]
    return f"{min(vals):.2f}-{max(vals):.2f}"


def fmt(x, nd=0):
    if x != x:
        return "-"
    return f"{x:,.{nd}f}"


def paired(rs: list[dict], n: str, ref: str, key: str = "rps") -> float:
    """Median over rounds of (system / reference) measured in the same round."""
    by = {}
    for r in rs:
        by.setdefault(r["round"], {})[r["system"]] = r.get(key, float("nan"))
    vals = [v[n] / v[ref] for v in by.values() if n in v and ref in v and v[ref] and v[ref] == v[ref]]
    return med(vals)


def summarize(runs: list[dict], scenarios: list[Scenario], systems: list[System]) -> str:
    out = []
    names = [s.name for s in systems]
    all_speed = med([r["speed_proxy_pre"] for r in runs] + [r["speed_proxy_post"] for r in runs])
    for sc in scenarios:
        rs = [r for r in runs if r["scenario"] == sc.name]
        if not rs:
            continue
        agg = {}
        for n in names:
            x = [r for r in rs if r["system"] == n]
            if not x:
                continue
            agg[n] = {
                "rps": med([r["rps"] for r in x]),
                "rps_min": min(r["rps"] for r in x), "rps_max": max(r["rps"] for r in x),
                "p50": med([r["p50_ms"] for r in x]), "p99": med([r["p99_ms"] for r in x]),
                "p999": med([r.get("p999_ms", float("nan")) for r in x]),
                "cpu": med([r["proxy_cpu"] for r in x]),
                "sys": med([r.get("proxy_sys_share", float("nan")) for r in x]),
                "eff": med([r["rps_per_core"] for r in x]),
                "rss": max(r["rss_mb"] for r in x),
                "errors": sum(r["non2xx"] + r["sock_err"] for r in x),
                "n": len(x), "steady": sum(1 for r in x if r["steady"]), "load": load_range(x),
                "foreign": med([r["foreign_cpu"] for r in x]),
                "foreign_max": max(r["foreign_cpu"] for r in x),
                "speed": med([(r["speed_proxy_pre"] + r["speed_proxy_post"]) / 2 for r in x]) / all_speed,
                "xd": paired(rs, n, "direct"), "xn": paired(rs, n, "nginx"),
                "xe": paired(rs, n, "nginx", "rps_per_core"),
                "dp99": paired_diff(rs, n, "direct", "p99_ms"),
            }
        out.append(f"\n### {sc.name}: {sc.doc}\n")
        if sc.tool == "oha":
            out.append("| system | achieved req/s | p50 ms | p99 ms | p99.9 ms | p99 − direct (µs, paired) | proxy CPU | RSS MB | errors | runs (steady) | load1 | core speed | foreign CPU med/max |")
            out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for n, a in agg.items():
                dp99 = a["dp99"] * 1000 if n != "direct" else float("nan")
                out.append(f"| {n} | {fmt(a['rps'])} | {fmt(a['p50'], 3)} | {fmt(a['p99'], 3)} | {fmt(a['p999'], 3)} | "
                           f"{fmt(dp99)} | {fmt(a['cpu'] * 100)}% | {fmt(a['rss'], 1)} | {a['errors']} | "
                           f"{a['n']} ({a['steady']}) | {a['load']} | {fmt(a['speed'], 2)} | "
                           f"{fmt(a['foreign'] * 100)}/{fmt(a['foreign_max'] * 100)}% |")
            continue
        out.append("| system | req/s median | min–max | × direct | × nginx | p50 ms | p99 ms | proxy CPU (kernel share) | req/s per proxy core | eff × nginx | RSS MB | errors | runs (steady) | load1 | core speed | foreign CPU med/max |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n, a in agg.items():
            out.append(
                f"| {n} | {fmt(a['rps'])} | {fmt(a['rps_min'])}–{fmt(a['rps_max'])} | {fmt(a['xd'], 2)} | {fmt(a['xn'], 2)} | "
                f"{fmt(a['p50'], 3)} | {fmt(a['p99'], 3)} | {fmt(a['cpu'] * 100)}% ({fmt(a['sys'] * 100)}%) | {fmt(a['eff'])} | {fmt(a['xe'], 2)} | "
                f"{fmt(a['rss'], 1)} | {a['errors']} | {a['n']} ({a['steady']}) | {a['load']} | {fmt(a['speed'], 2)} | "
                f"{fmt(a['foreign'] * 100)}/{fmt(a['foreign_max'] * 100)}% |")
    out.append(cross_summary(runs, names))
    out.append("\n× direct / × nginx / eff × nginx: median over rounds of the ratio within the same round. "
               "req/s per proxy core = req/s ÷ proxy CPU (cores). core speed: proxy core's busy-loop speed "
               "during the system's runs ÷ session median (1.00 = typical). steady: neither core's speed "
               "moved >15% across the run. foreign CPU: busy CPU (of 2 cores = 200%) not used by the "
               "proxy, upstream or load generator (other tenants' work, kernel threads, softirq).")
    return "\n".join(out)


def cross_summary(runs: list[dict], names: list[str]) -> str:
    """Policy cost: policies vs plain, paired inside each round (same system, and vs nginx plain)."""
    by = {}
    for r in runs:
        by.setdefault((r["round"], r["scenario"], r["system"]), r)
    rounds = sorted({r["round"] for r in runs})
    if not any(k[1] == "policies" for k in by) or not any(k[1] == "plain" for k in by):
        return ""
    out = ["\n### policy cost (paired per round, median)\n",
           "| system | policies ÷ own plain (req/s) | policies ÷ nginx plain (req/s) | policies ÷ own plain (req/s per core) |",
           "|---|---|---|---|"]
    for n in names:
        if n == "direct":
            continue
        own, vs_ng, eff = [], [], []
        for rd in rounds:
            pol, pl, ng = by.get((rd, "policies", n)), by.get((rd, "plain", n)), by.get((rd, "plain", "nginx"))
            if pol and pl:
                own.append(pol["rps"] / pl["rps"])
                eff.append(pol["rps_per_core"] / pl["rps_per_core"])
            if pol and ng:
                vs_ng.append(pol["rps"] / ng["rps"])
        if own or vs_ng:
            out.append(f"| {n} | {fmt(med(own), 2)} | {fmt(med(vs_ng), 2)} | {fmt(med(eff), 2)} |")
    return "\n".join(out)


def paired_diff(rs: list[dict], n: str, ref: str, key: str) -> float:
    by = {}
    for r in rs:
        by.setdefault(r["round"], {})[r["system"]] = r.get(key, float("nan"))
    return med([v[n] - v[ref] for v in by.values() if n in v and ref in v])


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def make_cert(env: Env):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(env.key), "-out", str(env.cert), "-days", "30",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    env.pem.write_text(env.cert.read_text() + env.key.read_text())
    for p in (env.cert, env.key, env.pem):
        os.chmod(p, 0o644)


def check_instance(sys_: System, inst: str, port: int, tls: bool) -> str:
    # readiness: some proxies open the listener before their routes are loaded
    end = time.time() + 15
    while True:
        try:
            st, body = http_get(port, PATH_SMALL, tls)
        except OSError:
            st, body = 0, b""
        if st == 200 or time.time() > end:
            break
        time.sleep(0.2)
    if st != 200 or body != SMALL_BODY.encode():
        return f"{sys_.name}/{inst}: GET {PATH_SMALL} -> {st} {body[:80]!r}"
    st, body = http_get(port, PATH_LARGE, tls)
    if st != 200 or body != LARGE_BODY.encode():
        return f"{sys_.name}/{inst}: GET {PATH_LARGE} -> {st} len {len(body)}"
    keyless = sys_.note == "GATEWAY_CMD" and os.environ.get("GATEWAY_POLICIES_KEYLESS") == "1"
    if inst == "policies" and sys_.name != "direct" and not keyless:
        st, _ = http_get(port, PATH_SMALL, tls, key=None)
        if st == 200:
            return f"{sys_.name}/policies: request without API key was let through"
        st2, _ = http_get(port, PATH_SMALL, tls, key="wrong-key")
        if st2 == 200:
            return f"{sys_.name}/policies: request with a wrong API key was let through"
    return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=os.environ.get("SCENARIOS", DEFAULT_SCENARIOS))
    ap.add_argument("--systems", default=os.environ.get("SYSTEMS", "nginx,haproxy,caddy,traefik,nginxlua"))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 5)))
    ap.add_argument("--duration", type=float, default=float(os.environ.get("DURATION", 5)))
    ap.add_argument("--warmup", type=float, default=float(os.environ.get("WARMUP", 1)))
    ap.add_argument("--conns", type=int, default=int(os.environ.get("CONNS", 50)))
    ap.add_argument("--h2-conns", type=int, default=int(os.environ.get("H2_CONNS", 10)))
    ap.add_argument("--lat-rate", type=int, default=int(os.environ.get("LAT_RATE", 5000)))
    ap.add_argument("--quiet-busy", type=float, default=float(os.environ.get("QUIET_BUSY", 0.3)),
                    help="before each run wait until other work uses at most this many cores")
    ap.add_argument("--quiet-wait", type=float, default=float(os.environ.get("QUIET_WAIT", 60)),
                    help="longest wait for that, seconds (the run then goes ahead and says so)")
    ap.add_argument("--max-foreign", type=float, default=float(os.environ.get("MAX_FOREIGN", 0.25)),
                    help="repeat a run when other work used more than this many cores during it")
    ap.add_argument("--retries", type=int, default=int(os.environ.get("RETRIES", 2)))
    ap.add_argument("--load-cpu", default=os.environ.get("LOAD_CPU", "0"))
    ap.add_argument("--proxy-cpu", default=os.environ.get("PROXY_CPU", "1"))
    ap.add_argument("--out", default=os.environ.get("OUT_DIR", str(BENCH_DIR / "results")))
    ap.add_argument("--check-only", action="store_true", help="start everything, verify responses, stop")
    ap.add_argument("--resummarize", metavar="RESULTS_JSON", help="rebuild the tables of a finished run")
    args = ap.parse_args()
    if args.resummarize:
        data = json.loads(Path(args.resummarize).read_text())
        runs = data["runs"]
        names = list(dict.fromkeys(r["system"] for r in runs))
        scs = [SCENARIOS[n] for n in dict.fromkeys(r["scenario"] for r in runs)]
        print(summarize(runs, scs, [System(n, {}) for n in names]))
        return 0

    args.oha = shutil.which("oha") or str(Path.home() / ".cargo/bin/oha")
    scenarios = [SCENARIOS[s] for s in args.scenarios.split(",") if s]
    if not Path(args.oha).exists():
        dropped = [s.name for s in scenarios if s.tool == "oha"]
        scenarios = [s for s in scenarios if s.tool != "oha"]
        if dropped:
            print(f"oha not found: skipping {dropped} (setup.sh WITH_OHA=1 installs it)", file=sys.stderr)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = Path(args.out) / stamp
    for sub in ("configs", "logs", "raw", "tmp", "xdg"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(run / "logs", 0o777)
    env = Env(run, run / "cert.pem", run / "key.pem", run / "combined.pem")
    make_cert(env)

    managed: list[Managed] = []
    check_only_ok = False
    systems = [direct_system()] + build_systems(args, env)

    def stop_all(*_):
        for m in reversed(managed):
            m.stop()

    signal.signal(signal.SIGTERM, lambda *a: (stop_all(), sys.exit(143)))
    try:
        upstream = Managed("upstream", ["nginx", "-e", str(env.logs / "upstream-startup.log"),
                                        "-c", str(upstream_conf(env)), "-g", "daemon off;"],
                           args.load_cpu, env.logs)
        managed.append(upstream)
        needed = {sc.instance for sc in scenarios}
        problems = []
        if not (wait_port(UPSTREAM_PORT) and wait_port(UPSTREAM_TLS_PORT)):
            sys.exit("upstream did not start; see " + str(env.logs))
        for s in systems:
            if s.name == "direct":
                continue
            for inst, port in s.ports.items():
                if inst not in needed:
                    continue
                m = s.starters[inst](inst, port)
                if m not in managed:
                    managed.append(m)
                s.procs[inst] = m
        active = []
        for s in systems:
            ok = True
            for inst, port in s.ports.items():
                if inst not in needed:
                    continue
                if not wait_port(port, proc=s.procs.get(inst)):
                    problems.append(f"{s.name}/{inst}: port {port} not listening "
                                    f"(see {env.logs}/{s.name}-{inst}.out)")
                    ok = False
                    continue
                try:
                    err = check_instance(s, inst, port, inst == "tls")
                except Exception as e:  # noqa: BLE001 - report any client failure
                    err = f"{s.name}/{inst}: {e!r}"
                if err:
                    problems.append(err)
                    ok = False
            if ok:
                active.append(s)
        for p in problems:
            print("CHECK FAILED:", p, file=sys.stderr)
        meta = {
            "stamp": stamp, "uname": os.uname().release, "nproc": os.cpu_count(),
            "args": vars(args), "systems": {s.name: {"ports": s.ports, "note": s.note} for s in systems},
            "versions": versions(), "problems": problems, "uptime_start": uptime(),
            "body_bytes": {"small": len(SMALL_BODY), "large": len(LARGE_BODY)},
        }
        if args.check_only:
            print(json.dumps(meta, indent=1))
            if problems:
                print(f"logs and configs kept in {run}", file=sys.stderr)
                return 1
            check_only_ok = True
            return 0

        runs, discarded = [], []
        total = sum(1 for sc in scenarios for s in active if s.supports(sc)) * args.rounds
        k = 0
        for rnd in range(args.rounds):
            for sc in scenarios:
                order = [s for s in active if s.supports(sc)]
                shift = rnd % max(1, len(order))
                order = order[shift:] + order[:shift]  # rotate: no system always runs first
                for s in order:
                    k += 1
                    tag = f"r{rnd + 1}-{sc.name}-{s.name}"
                    # a run that other work disturbed (foreign CPU above the limit) is repeated,
                    # a bounded number of times; every attempt is kept in results.json
                    for attempt in range(args.retries + 1):
                        r = measure(args, s, sc, upstream, env, tag)
                        r["attempt"] = attempt
                        if r["foreign_cpu"] <= args.max_foreign or attempt == args.retries:
                            break
                        r["round"] = rnd + 1
                        r["discarded"] = True
                        discarded.append(r)
                        print(f"      {tag}: foreign CPU {r['foreign_cpu'] * 100:.0f}% -> repeat", flush=True)
                    r["round"] = rnd + 1
                    runs.append(r)
                    # keep a usable record even if the run is interrupted
                    (run / "results.json").write_text(
                        json.dumps({"meta": meta, "runs": runs, "discarded": discarded}, indent=1))
                    print(f"[{k}/{total}] {tag:32s} {fmt(r['rps']):>9} req/s  p99 {fmt(r['p99_ms'], 3)} ms  "
                          f"proxy {fmt(r.get('proxy_cpu', float('nan')) * 100)}%  load {r['load_end']}  "
                          f"speed {r['speed_load_pre']:.1f}/{r['speed_proxy_pre']:.1f}->"
                          f"{r['speed_load_post']:.1f}/{r['speed_proxy_post']:.1f}  "
                          f"foreign {fmt(r['foreign_cpu'] * 100)}% (waited {r['quiet_wait_s']}s, "
                          f"{r['pre_busy_cores']} busy)  err {r['non2xx'] + r['sock_err']}",
                          flush=True)
        meta["uptime_end"] = uptime()
        meta["access_log_lines"] = {p.name: sum(1 for _ in open(p, "rb"))
                                    for p in env.logs.glob("*access*.log")}
        hap = env.logs / "haproxy-policies.out"
        if hap.exists():
            meta["access_log_lines"]["haproxy-policies.out (stdout log)"] = sum(1 for _ in open(hap, "rb"))
        trim_logs(env.logs)
        table = summarize(runs, scenarios, active)
        left_out = "".join(f"\n**left out, failed check:** {p}" for p in problems)
        head = (f"# Proxy benchmark {stamp}\n{left_out}\nmachine: {os.cpu_count()} CPUs, kernel {os.uname().release}; "
                f"load generator + upstream on CPU {args.load_cpu}, proxy on CPU {args.proxy_cpu}; "
                f"{args.rounds} rounds x {args.duration:g}s (+{args.warmup:g}s warm-up), {args.conns} connections, "
                f"systems interleaved with rotating order.\nuptime at start: {meta['uptime_start']}\n"
                f"uptime at end:   {meta['uptime_end']}\n")
        (run / "summary.md").write_text(head + table + "\n")
        (run / "results.json").write_text(
            json.dumps({"meta": meta, "runs": runs, "discarded": discarded}, indent=1))
        with open(run / "runs.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=sorted({k for r in runs for k in r}))
            w.writeheader()
            w.writerows(runs)
        print(head + table)
        print(f"\nresults: {run}")
        if problems:  # a system that failed its checks was left out: say so in the exit status
            print("systems left out after failed checks:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
        return 0
    finally:
        stop_all()
        shutil.rmtree(run / "tmp", ignore_errors=True)
        if check_only_ok:  # a passing check leaves nothing behind
            shutil.rmtree(run, ignore_errors=True)


def trim_logs(logs: Path, keep: int = 20, over: int = 1 << 20):
    """Access logs reach tens of MB per run: keep the first lines as a sample (the line
    counts are already in results.json)."""
    for p in logs.iterdir():
        if p.is_file() and p.stat().st_size > over:
            with open(p, "rb") as f:
                head = [next(f, b"") for _ in range(keep)]
            p.write_bytes(b"".join(head) + b"... (trimmed by harness.py; line count in results.json)\n")


def uptime() -> str:
    try:
        return subprocess.check_output(["uptime"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return loadavg()


def versions() -> dict:
    def v(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "n/a"
    tb = traefik_bin()
    return {"nginx": v(["nginx", "-v"]), "haproxy": v(["haproxy", "-v"]), "caddy": v(["caddy", "version"]),
            "traefik": v([tb, "version"]) if tb else "n/a",
            "traefik_full": " ".join(subprocess.run([tb, "version"], capture_output=True, text=True).stdout.split())
            if tb else "n/a",
            "wrk": v(["wrk", "-v"]), "h2load": v(["h2load", "--version"]),
            "oha": v([shutil.which("oha") or str(Path.home() / ".cargo/bin/oha"), "--version"])}


if __name__ == "__main__":
    sys.exit(main())
