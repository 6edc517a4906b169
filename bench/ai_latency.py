#!/usr/bin/env python3
"""Latency Gantry's AI facade (`ai_proxy`) adds to an LLM provider, measured against the fake
provider (llmock) called directly, in one run.

For each scenario the same request is sent, one at a time over a kept-alive connection, to
llmock directly and to Gantry in front of it, alternating (direct, gateway, direct, ...) so
that drift of this shared machine hits both alike:

- `openai`: a chat completion, OpenAI format both ways (Gantry passes it on, reading usage).
- `anthropic`: an OpenAI chat completion that Gantry translates to Anthropic's Messages API
  and back, against the same Messages request sent to llmock directly.
- `openai_stream`, `anthropic_stream`: the same, streamed (the direct OpenAI stream asks for
  the usage chunk, as Gantry asks of the provider and then drops for a client that did not). Per stream, the time to the first
  event and to the end; the added time per chunk is the added time to the end minus the added
  time to the first event, over the chunks after the first.

Usage: bench/ai_latency.py [--gantry target/release/gantry] [--requests 400]
Needs llmock in target/test-tools/llmock (scripts/test.sh installs it).
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLMOCK_PYTHON = ROOT / "target" / "test-tools" / "llmock" / "bin" / "python"
LLMOCK_SERVICE = ROOT / "crates" / "gantry-testkit" / "python" / "llmock_service.py"

PROMPT = "Summarise the benefits of an API gateway in front of many language model providers " * 3


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port, process, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def start_llmock():
    env = dict(os.environ, LLMOCK_RESPONSE_STYLE="echo", PYTHONDONTWRITEBYTECODE="1")
    process = subprocess.Popen(
        [str(LLMOCK_PYTHON), str(LLMOCK_SERVICE)], env=env, stdout=subprocess.PIPE, text=True
    )
    line = process.stdout.readline()
    if not line.startswith("listening "):
        sys.exit(f"llmock did not start: {line!r}")
    return process, int(line.split()[1])


def start_gantry(binary, llmock_port):
    port = free_port()
    config = f"""
node:
  listeners:
    - address: 127.0.0.1:{port}
upstreams:
  - id: llm
    endpoints: [127.0.0.1:{llmock_port}]
    retries: {{attempts: 0}}
routes:
  - id: ai
    paths: [/v1/chat/completions]
    policies:
      - ai_proxy:
          models:
            - name: gpt
              targets: [{{provider: openai, upstream: llm, model: gpt-4o-mini, api_key: sk-bench}}]
            - name: claude
              targets: [{{provider: anthropic, upstream: llm, model: claude-sonnet-4-5, api_key: sk-bench, base_path: /anthropic/v1}}]
"""
    directory = tempfile.mkdtemp(prefix="gantry-ai-bench-")
    path = Path(directory) / "gantry.yaml"
    path.write_text(config)
    process = subprocess.Popen(
        [binary, "run", "--config", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_listening(port, process, "gantry")
    return process, port


def openai_body(model, stream, include_usage=False):
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": PROMPT}]}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


def anthropic_body(stream):
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "stream": stream,
        "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
    }


class Endpoint:
    """One kept-alive connection and the request it sends."""

    def __init__(self, port, path, body, headers):
        self.connection = http.client.HTTPConnection("127.0.0.1", port)
        self.path = path
        self.body = json.dumps(body)
        self.headers = dict(headers, **{"content-type": "application/json"})

    def whole(self):
        started = time.perf_counter()
        self.connection.request("POST", self.path, self.body, self.headers)
        response = self.connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            sys.exit(f"{self.path} answered {response.status}: {data[:300]!r}")
        return elapsed

    def stream(self):
        """Seconds to the first event, to the end, and the number of data events."""
        started = time.perf_counter()
        self.connection.request("POST", self.path, self.body, self.headers)
        response = self.connection.getresponse()
        if response.status != 200:
            sys.exit(f"{self.path} answered {response.status}: {response.read()[:300]!r}")
        first = None
        events = 0
        buffer = b""
        while True:
            chunk = response.read1(65536)
            if not chunk:
                break
            if first is None:
                first = time.perf_counter() - started
            buffer += chunk
            *complete, buffer = buffer.split(b"\n\n")
            events += sum(1 for event in complete if b"data:" in event)
        return first or 0.0, time.perf_counter() - started, events


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ms(seconds):
    return f"{seconds * 1000:.3f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gantry", default=str(ROOT / "target" / "release" / "gantry"))
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()

    llmock, llmock_port = start_llmock()
    gantry, gantry_port = start_gantry(args.gantry, llmock_port)
    anthropic_headers = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}
    openai_headers = {"authorization": "Bearer sk-bench"}
    try:
        rows = []
        for name, direct, via in [
            (
                "openai",
                Endpoint(llmock_port, "/v1/chat/completions", openai_body("gpt-4o-mini", False), openai_headers),
                Endpoint(gantry_port, "/v1/chat/completions", openai_body("gpt", False), {}),
            ),
            (
                "anthropic",
                Endpoint(llmock_port, "/anthropic/v1/messages", anthropic_body(False), anthropic_headers),
                Endpoint(gantry_port, "/v1/chat/completions", openai_body("claude", False), {}),
            ),
        ]:
            for _ in range(20):
                direct.whole(), via.whole()
            direct_times, via_times = [], []
            for _ in range(args.requests):
                direct_times.append(direct.whole())
                via_times.append(via.whole())
            rows.append((name, direct_times, via_times))

        streams = []
        for name, direct, via in [
            (
                "openai_stream",
                # Gantry asks every OpenAI stream for its usage: the direct call does too, so
                # llmock does the same work both ways.
                Endpoint(
                    llmock_port, "/v1/chat/completions", openai_body("gpt-4o-mini", True, True), openai_headers
                ),
                Endpoint(gantry_port, "/v1/chat/completions", openai_body("gpt", True), {}),
            ),
            (
                "anthropic_stream",
                Endpoint(llmock_port, "/anthropic/v1/messages", anthropic_body(True), anthropic_headers),
                Endpoint(gantry_port, "/v1/chat/completions", openai_body("claude", True), {}),
            ),
        ]:
            for _ in range(10):
                direct.stream(), via.stream()
            direct_runs, via_runs = [], []
            for _ in range(args.requests // 2):
                direct_runs.append(direct.stream())
                via_runs.append(via.stream())
            streams.append((name, direct_runs, via_runs))
    finally:
        gantry.terminate()
        llmock.terminate()
        gantry.wait()
        llmock.wait()

    print(f"requests per scenario: {args.requests} (streams: {args.requests // 2}), sequential, alternating")
    print()
    print("| scenario | direct p50 ms | via Gantry p50 ms | added p50 ms | direct p99 ms | via Gantry p99 ms | added p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, direct_times, via_times in rows:
        d50, v50 = statistics.median(direct_times), statistics.median(via_times)
        d99, v99 = percentile(direct_times, 0.99), percentile(via_times, 0.99)
        print(f"| {name} | {ms(d50)} | {ms(v50)} | {ms(v50 - d50)} | {ms(d99)} | {ms(v99)} | {ms(v99 - d99)} |")
    print()
    print("| stream | chunks direct / via | first event added p50 ms | end added p50 ms | added per chunk µs |")
    print("|---|---|---|---|---|")
    for name, direct_runs, via_runs in streams:
        first_added = statistics.median(r[0] for r in via_runs) - statistics.median(r[0] for r in direct_runs)
        end_added = statistics.median(r[1] for r in via_runs) - statistics.median(r[1] for r in direct_runs)
        chunks_direct = statistics.median(r[2] for r in direct_runs)
        chunks_via = statistics.median(r[2] for r in via_runs)
        per_chunk = (end_added - first_added) / max(1, chunks_via - 1)
        print(
            f"| {name} | {chunks_direct:.0f} / {chunks_via:.0f} | {ms(first_added)} | {ms(end_added)} | {per_chunk * 1e6:.1f} |"
        )


if __name__ == "__main__":
    main()
