"""llmock (PyPI), the LLM provider fake, on a port the system picks.

Prints `listening <port>` once the socket accepts connections; runs until killed. Its
behaviour comes from llmock's own LLMOCK_* environment variables (error rates, stream chunk
delay, response style), read by create_app.
"""

import socket

import uvicorn
from llmock.main import create_app

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning"))
print(f"listening {sock.getsockname()[1]}", flush=True)
server.run(sockets=[sock])
