"""A real OpenAI-compatible chat-completions server for tests: stdlib HTTP on loopback, serving a tiny local model.

    with ChatServer(tiny_models.policy, fail_first=2) as server:   # the first 2 requests get a 503
        OpenAI(base_url=server.url, api_key="x").chat.completions.create(model="tiny", messages=[...])

The reply is the model's greedy continuation of the messages rendered with its chat template. It counts
requests and the most in flight at once, and keeps every request's messages.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class ChatServer:
    def __init__(self, model_path, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        self.fail_first, self.delay_s = fail_first, delay_s
        self.requests, self.in_flight, self.max_in_flight, self.messages = 0, 0, 0, []
        self.lock, self.model_lock = threading.Lock(), threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reply(self, messages, max_tokens: int) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with self.model_lock, torch.no_grad():
            out = self.model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    number = server.requests
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if self.path != "/v1/chat/completions":
                        return self._send(404, {"error": {"message": f"no route {self.path}"}})
                    if number <= server.fail_first:
                        return self._send(503, {"error": {"message": "warming up", "type": "server_error"}})
                    time.sleep(server.delay_s)
                    server.messages.append(body["messages"])
                    content = server.reply(body["messages"], int(body.get("max_tokens") or 16))
                    self._send(200, {"id": f"chatcmpl-{number}", "object": "chat.completion", "created": int(time.time()),
                                     "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                                     "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
