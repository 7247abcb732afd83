"""`vitft serve` under a bounded load and abuse mix: throughput, p50/p99, peak RSS, status codes.

Starts ``vitft serve`` (default conf/serve.yaml limits) on 127.0.0.1 and, for ``--seconds``, runs
``--clients`` asyncio clients that each send, one after another, a mix of
  good       one real PNG (raw image body)                                 -> 200
  multipart  one good and one corrupt file in one request                  -> 200, one item error
  corrupt    a truncated PNG                                                -> 400
  large      a 6000 x 6000 px PNG (36 Mpx: under max_pixels, decoded)       -> 200
  bomb       a 12000 x 12000 px PNG of a few hundred KB (144 Mpx)           -> 413 from its header
  bomb64     64 such bombs in one multipart request                         -> 413, 64 item errors
  oversized  a body over max_request_mb                                     -> 413 before reading
while ``--slow`` more connections trickle request bodies at one byte a second (reopened as the
server times them out: 408). A probe sends a normal request every second once all slow uploads
are open. Traffic goes to 127.0.0.1 only, and every client stops at the deadline.

    python benchmarks/serve_load.py [--quick] [--seconds 180] [--clients 8] [--slow 40]

The server's peak RSS is its VmHWM. Prints a table per kind and the goals, writes
benchmarks/results/serve_load.csv, and ends with ``RESULT serve_load <peak RSS in GB>``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from _common import cpu_flags, machine_note, table, write_results
from serve import load_images, make_model, start_server

HOST = "127.0.0.1"  # never anywhere else
MIX = {
    "good": 0.45,
    "multipart": 0.1,
    "large": 0.06,
    "corrupt": 0.12,
    "bomb": 0.12,
    "bomb64": 0.05,
    "oversized": 0.1,
}


def multipart(parts: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    boundary = "vitftloadboundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{n}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for n, data in parts
    )
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def payloads(max_request_mb: float) -> dict[str, tuple[str, bytes]]:
    """(content type, body) of each kind of request."""
    from PIL import Image

    good = load_images(1)[0]
    bomb = png(Image.new("1", (12000, 12000)))
    large = png(Image.new("RGB", (6000, 6000), (90, 120, 60)))
    return {
        "good": ("image/png", good),
        "multipart": multipart([("a.png", good), ("broken.png", good[: len(good) // 3])]),
        "large": ("image/png", large),
        "corrupt": ("image/png", good[: len(good) // 3]),
        "bomb": ("image/png", bomb),
        "bomb64": multipart([(f"bomb{i}.png", bomb) for i in range(64)]),
        "oversized": ("image/png", os.urandom(int((max_request_mb + 1) * 1e6))),
    }


async def post(port: int, ctype: str, body: bytes, timeout: float = 120) -> int:
    """Status code of one POST /predict (a fresh connection; 0: no answer)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return 0
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    # Read while writing: a server may answer 413 from the headers and close before the end.
    answer = asyncio.ensure_future(asyncio.wait_for(reader.readline(), timeout))
    try:
        writer.write(head.encode())
        for i in range(0, len(body), 1 << 20):
            if answer.done():
                break
            writer.write(body[i : i + (1 << 20)])
            await asyncio.wait_for(writer.drain(), timeout)
    except (OSError, asyncio.TimeoutError):
        pass
    try:
        line = await answer
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        return 0
    finally:
        writer.close()


async def client(port: int, kinds: dict, deadline: float, rng: random.Random, out: list) -> None:
    names, weights = list(MIX), list(MIX.values())
    while time.monotonic() < deadline:
        kind = rng.choices(names, weights)[0]
        t0 = time.perf_counter()
        status = await post(port, *kinds[kind])
        out.append((kind, status, (time.perf_counter() - t0) * 1000))


async def slow_upload(port: int, deadline: float, state: dict) -> None:
    """Keep one connection trickling a body at a byte a second until the deadline."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(1)
            continue
        writer.write(
            f"POST /predict HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: image/png\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
        )
        state["open"] += 1
        try:
            while time.monotonic() < deadline and not reader.at_eof():
                writer.write(b"\0")
                await writer.drain()
                try:  # the server's answer (408) ends this upload
                    first = await asyncio.wait_for(reader.read(1), 1.0)
                    if first:
                        line = first + await asyncio.wait_for(reader.readline(), 5)
                        state["answered"][int(line.split()[1])] += 1
                        break
                except asyncio.TimeoutError:
                    pass
        except (OSError, ValueError, IndexError):
            pass
        finally:
            state["open"] -= 1
            writer.close()


async def probe(port: int, good: bytes, deadline: float, state: dict, want: int) -> None:
    """A normal request every second while at least ``want`` slow uploads are open."""
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        if state["open"] >= want:
            t0 = time.perf_counter()
            status = await post(port, "image/png", good, timeout=30)
            state["probes"].append((status, (time.perf_counter() - t0) * 1000, state["open"]))


async def rss_peak(pid: int, deadline: float, state: dict) -> None:
    while time.monotonic() < deadline:
        state["rss_mb"] = max(state["rss_mb"], rss_mb(pid, "VmRSS"))
        await asyncio.sleep(0.2)


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(port: int, pid: int, kinds: dict, args: argparse.Namespace) -> tuple[list, dict]:
    deadline = time.monotonic() + args.seconds
    state: dict = {"open": 0, "answered": Counter(), "probes": [], "rss_mb": 0.0}
    out: list = []
    rng = random.Random(0)
    tasks = [slow_upload(port, deadline, state) for _ in range(args.slow)]
    tasks += [
        client(port, kinds, deadline, random.Random(rng.random()), out) for _ in range(args.clients)
    ]
    tasks += [
        probe(port, kinds["good"][1], deadline, state, args.slow),
        rss_peak(pid, deadline, state),
    ]
    await asyncio.gather(*tasks)
    return out, state


def summarize(out: list, state: dict, seconds: float, hwm_mb: float) -> tuple[list, dict]:
    by_kind: dict[str, list] = defaultdict(list)
    for kind, status, ms in out:
        by_kind[kind].append((status, ms))
    rows = []
    for kind in MIX:
        got = by_kind.get(kind, [])
        ms = np.array([m for _, m in got]) if got else np.array([np.nan])
        codes = Counter(s for s, _ in got)
        rows.append(
            [
                kind,
                len(got),
                len(got) / seconds,
                float(np.percentile(ms, 50)),
                float(np.percentile(ms, 99)),
                " ".join(f"{c}x{n}" for c, n in sorted(codes.items())),
            ]
        )
    good = [r for kind in ("good", "multipart", "large") for r in by_kind.get(kind, [])]
    probes = state["probes"]
    goals = {
        "good_requests": len(good),
        "good_5xx_or_no_answer": sum(1 for s, _ in good if s >= 500 or s == 0),
        "peak_rss_mb": round(max(hwm_mb, state["rss_mb"]), 1),
        "probes_with_slow_uploads_open": len(probes),
        "probes_answered_200": sum(1 for s, _, _ in probes if s == 200),
        "probe_p50_ms": round(float(np.median([m for _, m, _ in probes])), 1) if probes else None,
        "slow_upload_answers": dict(state["answered"]),
        "requests_per_s": round(len(out) / seconds, 2),
    }
    return rows, goals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="20 s, for CI")
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--slow", type=int, default=40)
    ap.add_argument("--model", default="small", choices=["tiny", "small"])
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.model = 20.0, "tiny"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp), args.model)
        proc, url = start_server(model_dir, 1, 8, 5.0, Path(tmp) / "run", "body_timeout_s=30")
        port = int(url.rsplit(":", 1)[1])
        try:
            kinds = payloads(20.0)  # conf/serve.yaml's max_request_mb
            rss0 = rss_mb(proc.pid, "VmRSS")
            out, state = asyncio.run(run(port, proc.pid, kinds, args))
            hwm = rss_mb(proc.pid, "VmHWM")
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)
    rows, goals = summarize(out, state, args.seconds, hwm)
    goals.update({"rss_at_start_mb": round(rss0, 1), "server_alive_after": alive})
    headers = ["kind", "requests", "req_per_s", "p50_ms", "p99_ms", "status_codes"]
    print(f"model={args.model} seconds={args.seconds:g} clients={args.clients} slow={args.slow}")
    print(machine_note())
    print(cpu_flags())
    print(table(headers, rows))
    print("GOALS " + json.dumps(goals))
    out_csv = write_results(
        "serve_load",
        [*headers, "model", "seconds", "goals"],
        [[*r, args.model, args.seconds, json.dumps(goals)] for r in rows],
    )
    print(f"table: {out_csv}")
    print(f"RESULT serve_load {goals['peak_rss_mb'] / 1024:.3f}")


if __name__ == "__main__":
    main()
