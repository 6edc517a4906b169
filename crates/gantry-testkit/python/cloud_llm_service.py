"""Fakes of Azure OpenAI and Amazon Bedrock that follow their wire formats, on a port the
system picks. Prints `listening <port>` once the socket accepts connections; runs until
killed.

Azure OpenAI (`/openai/deployments/{deployment}/{chat/completions|completions|embeddings}
?api-version=...` and the v1 API at `/openai/v1/...`): a request must carry the `api-key`
FAKE_AZURE_KEY (or `Authorization: Bearer FAKE_AZURE_KEY`, an Entra ID token), name the
deployment FAKE_AZURE_DEPLOYMENT and the api-version FAKE_AZURE_API_VERSION, as Azure would
refuse it otherwise (401, 404). Answers are OpenAI's, streams included, with Azure's content
filter results; a prompt holding `FILTER_ME` gets Azure's content filter error.

Amazon Bedrock (`/model/{modelId}/converse`, `/converse-stream`, `/invoke`): every request
must be signed with AWS Signature Version 4 for service `bedrock` in FAKE_AWS_REGION with
FAKE_AWS_ACCESS_KEY_ID / FAKE_AWS_SECRET_ACCESS_KEY (and FAKE_AWS_SESSION_TOKEN when set):
botocore signs the same request again at the time it names, and the signatures must match,
else 403 InvalidSignatureException. converse-stream answers in AWS event-stream frames
(`application/vnd.amazon.eventstream`) with FAKE_STREAM_DELAY_MS between events. A prompt
holding `THROTTLE` gets a 429 ThrottlingException; `STREAM_FAIL` a stream that ends in a
throttlingException frame. invoke serves Titan text embeddings.

GET /_fake/requests lists what was received: method, path, query, headers, body, and
`signature_ok` for Bedrock requests.
"""

import binascii
import datetime
import json
import os
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer

AZURE_KEY = os.environ.get("FAKE_AZURE_KEY", "azure-key")
AZURE_DEPLOYMENT = os.environ.get("FAKE_AZURE_DEPLOYMENT", "gpt-4o-mini-prod")
AZURE_API_VERSION = os.environ.get("FAKE_AZURE_API_VERSION", "2024-10-21")
AWS_REGION = os.environ.get("FAKE_AWS_REGION", "us-east-1")
AWS_CREDENTIALS = Credentials(
    os.environ.get("FAKE_AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
    os.environ.get("FAKE_AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
    os.environ.get("FAKE_AWS_SESSION_TOKEN") or None,
)
STREAM_DELAY = int(os.environ.get("FAKE_STREAM_DELAY_MS", "0")) / 1000.0

journal = []
journal_lock = threading.Lock()
signing_lock = threading.Lock()


# -- AWS event stream -----------------------------------------------------------------------


def event_frame(headers, payload):
    """One event-stream message as the format lays it out: total length, headers length,
    prelude CRC32, headers (name length, name, type 7 = string, value length, value),
    payload, message CRC32; all big-endian."""
    encoded = b""
    for name, value in headers:
        name_bytes, value_bytes = name.encode(), value.encode()
        encoded += struct.pack(">B", len(name_bytes)) + name_bytes
        encoded += struct.pack(">BH", 7, len(value_bytes)) + value_bytes
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message) & 0xFFFFFFFF)


def event(name, body):
    headers = [(":event-type", name), (":content-type", "application/json"), (":message-type", "event")]
    return event_frame(headers, json.dumps(body).encode())


def exception(kind, message):
    headers = [(":exception-type", kind), (":content-type", "application/json"), (":message-type", "exception")]
    return event_frame(headers, json.dumps({"message": message}).encode())


def check_encoder():
    """botocore's own event-stream parser must read what event_frame writes."""
    buffer = EventStreamBuffer()
    buffer.add_data(event("messageStart", {"role": "assistant"}))
    message = next(iter(buffer))
    assert message.headers[":event-type"] == "messageStart", message.headers
    assert json.loads(message.payload) == {"role": "assistant"}


# -- AWS Signature Version 4 --------------------------------------------------------------


def signature_matches(method, path, headers, body):
    """Whether the request's Authorization is what botocore computes for it: the same
    method, URL, content type, host, body and credentials, signed at the request's
    X-Amz-Date."""
    received = headers.get("authorization", "")
    amz_date = headers.get("x-amz-date", "")
    try:
        at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return False, "no valid X-Amz-Date"
    skew = abs((datetime.datetime.utcnow() - at).total_seconds())
    if skew > 300:
        return False, f"X-Amz-Date is {skew:.0f}s away from now"
    host = headers.get("host", "")
    request = AWSRequest(
        method=method,
        url=f"https://{host}{path}",
        data=body,
        headers={"Content-Type": headers.get("content-type", "")},
    )
    with signing_lock:
        original = botocore.auth.get_current_datetime
        botocore.auth.get_current_datetime = lambda: at
        try:
            botocore.auth.SigV4Auth(AWS_CREDENTIALS, "bedrock", AWS_REGION).add_auth(request)
        finally:
            botocore.auth.get_current_datetime = original
    expected = request.headers["Authorization"]
    if received != expected:
        return False, f"expected {expected}, got {received}"
    if AWS_CREDENTIALS.token and headers.get("x-amz-security-token") != AWS_CREDENTIALS.token:
        return False, "the session token is missing"
    return True, ""


# -- answers ------------------------------------------------------------------------------


def last_user_text(messages, text_of):
    for message in reversed(messages or []):
        if message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def openai_text(content):
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def converse_text(content):
    return " ".join(block["text"] for block in content or [] if "text" in block)


def tokens(text):
    return max(1, len(text.split()))


FILTER_RESULTS = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self, content_type):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunked(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/_fake/requests":
            with journal_lock:
                self.send_json(200, {"requests": list(journal)})
        else:
            self.send_json(404, {"message": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        parts = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        record = {"method": "POST", "path": parts.path, "query": parts.query, "headers": headers, "body": body}
        if parts.path.startswith("/openai/"):
            with journal_lock:
                journal.append(record)
            self.azure(parts, headers, body)
        elif parts.path.startswith("/model/"):
            ok, reason = signature_matches("POST", self.path, headers, raw)
            record["signature_ok"] = ok
            with journal_lock:
                journal.append(record)
            if not ok:
                print(f"signature refused: {reason}", flush=True)
                self.send_json(
                    403,
                    {"message": "The request signature we calculated does not match the signature you provided."},
                    [("x-amzn-ErrorType", "InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/")],
                )
                return
            self.bedrock(parts, body)
        else:
            self.send_json(404, {"message": "not found"})

    # Azure OpenAI ------------------------------------------------------------------------

    def azure(self, parts, headers, body):
        key = headers.get("api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if key != AZURE_KEY:
            self.send_json(401, {"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}})
            return
        segments = parts.path.split("/")
        query = parse_qs(parts.query)
        if parts.path.startswith("/openai/v1/"):
            operation = "/".join(segments[3:])
            model = (body or {}).get("model")
        elif len(segments) >= 5 and segments[2] == "deployments":
            if query.get("api-version") != [AZURE_API_VERSION]:
                self.send_json(404, {"error": {"code": "404", "message": "Resource not found"}})
                return
            model = unquote(segments[3])
            operation = "/".join(segments[4:])
        else:
            self.send_json(404, {"error": {"code": "404", "message": "Resource not found"}})
            return
        if model != AZURE_DEPLOYMENT:
            self.send_json(404, {"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."}})
            return
        if operation == "embeddings":
            inputs = body.get("input")
            inputs = inputs if isinstance(inputs, list) else [inputs]
            data = [{"object": "embedding", "index": i, "embedding": [0.25, -0.5, float(len(text))]} for i, text in enumerate(inputs)]
            count = sum(tokens(text) for text in inputs)
            self.send_json(200, {"object": "list", "data": data, "model": "text-embedding-3-small", "usage": {"prompt_tokens": count, "total_tokens": count}})
            return
        if operation == "completions":
            prompt = body.get("prompt", "")
            self.send_json(200, {"id": "cmpl-azure", "object": "text_completion", "created": int(time.time()), "model": "gpt-4o-mini",
                                 "choices": [{"index": 0, "text": f"azure completes: {prompt}", "finish_reason": "stop", "logprobs": None}],
                                 "usage": {"prompt_tokens": tokens(prompt), "completion_tokens": 3, "total_tokens": tokens(prompt) + 3}})
            return
        if operation != "chat/completions":
            self.send_json(404, {"error": {"code": "404", "message": "Resource not found"}})
            return
        prompt = last_user_text(body.get("messages"), openai_text)
        if "FILTER_ME" in prompt:
            self.send_json(400, {"error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry.",
                "type": None, "param": "prompt", "code": "content_filter", "status": 400,
                "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": dict(FILTER_RESULTS, violence={"filtered": True, "severity": "high"})},
            }})
            return
        answer = f"azure answers: {prompt}"
        usage = {"prompt_tokens": tokens(prompt), "completion_tokens": tokens(answer), "total_tokens": tokens(prompt) + tokens(answer)}
        created = int(time.time())
        if not body.get("stream"):
            self.send_json(200, {
                "id": "chatcmpl-azure", "object": "chat.completion", "created": created, "model": "gpt-4o-mini-2024-07-18",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}],
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "content_filter_results": FILTER_RESULTS,
                             "message": {"role": "assistant", "content": answer}}],
                "usage": usage,
            })
            return
        self.start_chunked("text/event-stream")

        def send(chunk):
            self.chunk(f"data: {json.dumps(chunk)}\n\n".encode())

        head = {"id": "chatcmpl-azure", "object": "chat.completion.chunk", "created": created, "model": "gpt-4o-mini-2024-07-18"}
        send({"choices": [], "created": 0, "id": "", "model": "", "object": "",
              "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}]})
        send(dict(head, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "content_filter_results": {}}]))
        for word in answer.split(" "):
            time.sleep(STREAM_DELAY)
            send(dict(head, choices=[{"index": 0, "delta": {"content": word + " "}, "finish_reason": None, "content_filter_results": FILTER_RESULTS}]))
        send(dict(head, choices=[{"index": 0, "delta": {}, "finish_reason": "stop", "content_filter_results": {}}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            send(dict(head, choices=[], usage=usage))
        self.chunk(b"data: [DONE]\n\n")
        self.end_chunked()

    # Amazon Bedrock ----------------------------------------------------------------------

    def bedrock(self, parts, body):
        segments = parts.path.split("/")
        if len(segments) != 4:
            self.send_json(404, {"message": "not found"}, [("x-amzn-ErrorType", "UnknownOperationException")])
            return
        model, action = unquote(segments[2]), segments[3]
        if action == "invoke":
            text = body.get("inputText")
            if not model.startswith("amazon.titan-embed") or not isinstance(text, str):
                self.send_json(400, {"message": "Malformed input request, please reformat your input and try again."},
                               [("x-amzn-ErrorType", "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/")])
                return
            dimensions = body.get("dimensions", 4)
            embedding = [round(0.1 * (i + 1), 3) for i in range(dimensions)]
            self.send_json(200, {"embedding": embedding, "inputTextTokenCount": tokens(text)})
            return
        if action not in ("converse", "converse-stream"):
            self.send_json(404, {"message": "not found"}, [("x-amzn-ErrorType", "UnknownOperationException")])
            return
        prompt = last_user_text(body.get("messages"), converse_text)
        if "THROTTLE" in prompt:
            self.send_json(429, {"message": "Too many requests, please wait before trying again."},
                           [("x-amzn-ErrorType", "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/")])
            return
        answer = f"bedrock answers: {prompt}"
        usage = {"inputTokens": tokens(prompt), "outputTokens": tokens(answer), "totalTokens": tokens(prompt) + tokens(answer)}
        if action == "converse":
            self.send_json(200, {
                "output": {"message": {"role": "assistant", "content": [{"text": answer}]}},
                "stopReason": "end_turn",
                "usage": usage,
                "metrics": {"latencyMs": 42},
            })
            return
        self.start_chunked("application/vnd.amazon.eventstream")
        self.chunk(event("messageStart", {"p": "abcdefghijkl", "role": "assistant"}))
        for index, word in enumerate(answer.split(" ")):
            time.sleep(STREAM_DELAY)
            if index == 1 and "STREAM_FAIL" in prompt:
                self.chunk(exception("throttlingException", "Too many tokens, please wait before trying again."))
                self.end_chunked()
                return
            self.chunk(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word + " "}, "p": "abcd"}))
        self.chunk(event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcdefgh"}))
        self.chunk(event("messageStop", {"p": "abcd", "stopReason": "end_turn"}))
        self.chunk(event("metadata", {"metrics": {"latencyMs": 1234}, "p": "ab", "usage": usage}))
        self.end_chunked()


check_encoder()
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = sock
server.daemon_threads = True
print(f"listening {sock.getsockname()[1]}", flush=True)
server.serve_forever()
