"""Message-bus benchmark: our typed codec and sockets against raw pyzmq and memcpy, in one run.

    python bench/bus.py [--seconds 3] [--payload-mib 64]

1. Small messages: round trips per second through a ROUTER hop (agent DEALER -> hub ROUTER -> back),
   typed (encode Renew, decode it at the hub, encode an Ack back, decode it) versus raw pyzmq echo of
   the same bytes on the same sockets. Both ends keep a window of messages in flight.
2. Large payloads: one PolicyUpdate with a float32 tensor of --payload-mib, agent -> hub over tcp
   loopback, decoded at the hub (zero-copy), versus an in-process memcpy of the same bytes; then the
   same over CURVE (encrypted, authenticated). Beside them, the machine's own tcp ceiling: the same bytes
   through plain kernel sockets to another process (no zmq, no framing), so a ratio below target can be
   told apart from a loopback that cannot carry more.

The hub runs in a separate process, as in production. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

RAW, TYPED = b"RAW", b"TYPED"  # one-frame markers switching the hub between raw echo and typed replies
WINDOW = 64  # messages in flight for the small-message phase


def hub_main(endpoint: str, key_dir: str | None, ready) -> None:
    """Echo hub: echoes frames untouched (raw pyzmq) until the TYPED marker, then decodes every message
    and answers with a typed Ack, as the real hub does."""
    import zmq

    from protocol import keys
    from protocol.codec import ProtocolError, decode, encode
    from protocol.messages import Ack
    from protocol.transport import hub_socket

    ctx = zmq.Context()
    curve = auth = None
    if key_dir:
        auth = keys.Authenticator(ctx, keys.AllowList(key_dir))
        auth.start()
        curve = keys.hub_keypair(key_dir)
    sock = hub_socket(ctx, endpoint, "data", curve=curve, insecure_loopback=curve is None)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    ready.set()
    typed = False
    while True:
        frames = sock.recv_multipart(copy=False)  # Frames: zero-copy tensors, and the ZAP User-Id
        identity = frames[0]
        if len(frames) == 2 and frames[1].bytes in (RAW, TYPED):
            typed = frames[1].bytes == TYPED
            continue
        if not typed:  # raw pyzmq echo: the same receive and send calls, no codec
            if len(frames) > 4:  # a large payload: acknowledge it without sending it back
                sock.send_multipart([identity.bytes, RAW])
            else:
                sock.send_multipart([f.bytes for f in frames])
            continue
        try:
            env = decode(frames[1:])
        except ProtocolError as e:  # as the real hub: answer with an Error, keep serving
            sock.send_multipart([identity.bytes, *encode(e.to_message(), sender="hub")])
            continue
        if env.message.kind == "disconnect":
            break
        nbytes = sum(t.nbytes for t in env.tensors.values())
        reply = Ack(task_id=env.header.task_id, attempt=env.header.attempt, status="renewed",
                    deadline_unix_s=float(nbytes))
        sock.send_multipart([identity.bytes, *encode(reply, sender="hub", reply_to=env.header.msg_id)])
    if auth is not None:
        auth.stop()
    sock.close(0)
    ctx.term()


def start_hub(key_dir: str | None) -> tuple[mp.Process, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    spawn = mp.get_context("spawn")
    ready = spawn.Event()
    proc = spawn.Process(target=hub_main, args=(endpoint, key_dir, ready), daemon=True)
    proc.start()
    if not ready.wait(60):
        raise RuntimeError("hub did not start")
    return proc, endpoint


def connect(endpoint: str, key_dir: str | None):
    import zmq

    from protocol import keys
    from protocol.transport import ClientCurve, agent_socket

    ctx = zmq.Context()
    curve = None
    if key_dir:
        curve = ClientCurve(keys.agent_keypair(key_dir, "bench"), keys.hub_public(key_dir))
    sock = agent_socket(ctx, endpoint, "data", name="bench", curve=curve, insecure_loopback=curve is None)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return ctx, sock


def round_trips(sock, make_frames, check, seconds: float) -> float:
    """Round trips per second with WINDOW messages in flight."""
    # Small frames: copy=True is pyzmq's fast path (zero-copy Frames cost more than they save below
    # 64 KiB), used for raw and typed alike.
    for _ in range(WINDOW):  # warm up the connection and the code paths
        sock.send_multipart(make_frames(0))
    for _ in range(WINDOW):
        check(sock.recv_multipart())
    done, start = 0, time.perf_counter()
    for i in range(WINDOW):
        sock.send_multipart(make_frames(i))
    while time.perf_counter() - start < seconds:
        check(sock.recv_multipart())
        done += 1
        sock.send_multipart(make_frames(done))
    elapsed = time.perf_counter() - start
    for _ in range(WINDOW):
        check(sock.recv_multipart())
    return done / elapsed


def small_messages(sock, seconds: float, rounds: int = 5) -> tuple[float, float]:
    """Raw: the frames of an encoded Renew, echoed untouched. Typed: encode a Renew, the hub decodes it
    and encodes an Ack, we decode that. Same sockets, same frame count, same sizes within a few bytes.

    Raw and typed alternate in `rounds` short rounds and each figure is the median, so drift in the
    load of a shared machine hits both sides alike."""
    import statistics

    from protocol.codec import decode, encode
    from protocol.messages import Renew

    def typed(i: int):
        return encode(Renew(task_id=f"task-{i:06d}", attempt=1), sender="bench")

    def typed_check(frames):
        assert decode(frames).message.kind == "ack"

    frames = [bytes(f) for f in typed(0)]

    def raw_check(received):
        assert len(received) == len(frames)

    raw_rates, typed_rates = [], []
    for _ in range(rounds):
        sock.send(RAW)
        raw_rates.append(round_trips(sock, lambda _: frames, raw_check, seconds / rounds))
        sock.send(TYPED)
        typed_rates.append(round_trips(sock, typed, typed_check, seconds / rounds))
    return statistics.median(typed_rates), statistics.median(raw_rates)


def large_payload(sock, nbytes: int, seconds: float) -> tuple[float, float]:
    """GB/s of one-way tensor transfer, stop-and-wait on a tiny reply: typed (a PolicyUpdate carrying a
    float32 tensor, decoded into a tensor at the hub) and raw pyzmq (the same bytes as one extra frame)."""
    import torch

    from protocol.codec import decode, encode
    from protocol.messages import PolicyUpdate

    tensor = torch.ones(nbytes // 4, dtype=torch.float32)
    message = PolicyUpdate(version=1, parent_version=0, base_model="bench")
    typed = lambda: encode(message, sender="bench", tensors={"w": tensor})  # noqa: E731
    raw_frames = [*typed()[:3], b"", tensor.numpy().data]  # 5 frames: the hub acks raw without decoding

    def rate(make_frames, check) -> float:
        sock.send_multipart(make_frames(), copy=False)
        check(sock.recv_multipart(copy=False))  # warm-up: the hub imports torch on its first tensor (~2 s)
        sent, start = 0, time.perf_counter()
        while sent == 0 or time.perf_counter() - start < seconds:
            sock.send_multipart(make_frames(), copy=False)
            check(sock.recv_multipart(copy=False))
            sent += 1
        return sent * nbytes / (time.perf_counter() - start) / 1e9

    def typed_check(frames):
        assert decode(frames).message.deadline_unix_s == nbytes  # the hub saw every byte

    sock.send(RAW)
    raw = rate(lambda: raw_frames, lambda frames: None)
    sock.send(TYPED)
    return rate(typed, typed_check), raw


def kernel_sink(port_queue, nbytes: int) -> None:
    """Plain kernel tcp receiver: reads each payload into one buffer, answers one byte."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port_queue.put(server.getsockname()[1])
        conn, _ = server.accept()
        view = memoryview(bytearray(nbytes))
        with conn:
            while True:
                got = 0
                while got < nbytes:
                    n = conn.recv_into(view[got:], nbytes - got)
                    if n == 0:
                        return
                    got += n
                conn.sendall(b"k")


def kernel_tcp_gbps(nbytes: int, seconds: float) -> float:
    """The machine's own ceiling for any tcp transport: the same payload, stop-and-wait, through plain kernel
    sockets (sendall / recv_into a preallocated buffer, no framing, no zmq) to another process."""
    import socket

    spawn = mp.get_context("spawn")
    ports = spawn.Queue()
    proc = spawn.Process(target=kernel_sink, args=(ports, nbytes), daemon=True)
    proc.start()
    payload = memoryview(np.ones(nbytes, dtype=np.uint8))
    with socket.create_connection(("127.0.0.1", ports.get(timeout=60))) as conn:
        conn.sendall(payload)  # warm-up
        conn.recv(1)
        sent, start = 0, time.perf_counter()
        while sent == 0 or time.perf_counter() - start < seconds:
            conn.sendall(payload)
            conn.recv(1)
            sent += 1
        rate = sent * nbytes / (time.perf_counter() - start) / 1e9
    proc.join(10)
    return rate


def memcpy_gbps(nbytes: int, seconds: float) -> float:
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    copies, start = 0, time.perf_counter()
    while copies == 0 or time.perf_counter() - start < seconds:
        np.copyto(dst, src)
        copies += 1
    return copies * nbytes / (time.perf_counter() - start) / 1e9


def run_phase(key_dir: str | None, fn, *args):
    from protocol.codec import encode
    from protocol.messages import Disconnect

    proc, endpoint = start_hub(key_dir)
    ctx, sock = connect(endpoint, key_dir)
    try:
        return fn(sock, *args)
    finally:
        sock.send(TYPED)  # a hub echoing raw frames switches back, then reads the Disconnect
        sock.send_multipart(encode(Disconnect(reason="bench over"), sender="bench"))
        proc.join(10)
        sock.close(0)
        ctx.term()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure (default 3)")
    parser.add_argument("--payload-mib", type=int, default=64, help="tensor payload size (default 64 MiB)")
    args = parser.parse_args(argv)
    nbytes = args.payload_mib << 20

    from protocol import keys

    typed_rate, raw_rate = run_phase(None, small_messages, args.seconds)
    print(f"small messages (round trips): typed {typed_rate:,.0f}/s, raw pyzmq echo {raw_rate:,.0f}/s, "
          f"ratio {typed_rate / raw_rate:.2f} (target >= 0.5)")
    copy = memcpy_gbps(nbytes, args.seconds)
    plain, plain_raw = run_phase(None, large_payload, nbytes, args.seconds)
    kernel = kernel_tcp_gbps(nbytes, args.seconds)
    with tempfile.TemporaryDirectory() as key_dir:
        keys.init_keys(key_dir, [("bench", "observer")])
        curve, curve_raw = run_phase(key_dir, large_payload, nbytes, args.seconds)
    print(f"large payload ({args.payload_mib} MiB): memcpy {copy:.2f} GB/s; tcp typed {plain:.2f} GB/s "
          f"(ratio {plain / copy:.3f}, target >= 0.25; raw pyzmq {plain_raw:.2f} GB/s); tcp+CURVE typed "
          f"{curve:.2f} GB/s (ratio {curve / copy:.3f}, target >= 0.05; raw pyzmq {curve_raw:.2f} GB/s)")
    print(f"this machine's tcp ceiling: plain kernel sockets {kernel:.2f} GB/s = {kernel / copy:.3f} of memcpy; "
          f"ours reaches {plain / kernel:.2f} of it")
    result = {
        "bench": "bus",
        "small_msgs_ratio": round(typed_rate / raw_rate, 3),
        "large_memcpy_ratio": round(plain / copy, 3),
        "large_curve_memcpy_ratio": round(curve / copy, 3),
        "small_typed_per_s": round(typed_rate), "small_raw_per_s": round(raw_rate),
        "memcpy_gbps": round(copy, 2), "tcp_gbps": round(plain, 2), "curve_gbps": round(curve, 2),
        "tcp_raw_pyzmq_gbps": round(plain_raw, 2), "curve_raw_pyzmq_gbps": round(curve_raw, 2),
        "tcp_kernel_gbps": round(kernel, 2), "kernel_tcp_memcpy_ratio": round(kernel / copy, 3),
        "large_vs_kernel_tcp": round(plain / kernel, 3),
        "large_vs_raw_pyzmq": round(plain / plain_raw, 3), "large_curve_vs_raw_pyzmq": round(curve / curve_raw, 3),
        "payload_mib": args.payload_mib,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
