"""Benchmark: DKIM signatures per second, ours (OpenSSL via `cryptography`) against dkimpy.

Signs a 2 KB and a 50 KB message with RSA-2048 and Ed25519 through
`mta.dkim.DkimSigner`, then the same messages with dkimpy's `dkim.sign` (its RSA
is pure Python), all relaxed/relaxed over the same header list, and prints
signatures/s, ms per message and the ratios. Also: canonicalize + hash alone
(the Python part of our cost) and RSA with two threads (OpenSSL releases the
GIL, so a worker thread can use the second core).

    .venv/bin/python bench/bench_dkim.py [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import base64
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mta.ingress.dkim import DkimSigner, SigningKey, body_hash

NOW = 1_700_000_000.0
MAX_RUNS = 200_000  # a bound on every timing loop, whatever the time budget


def make_message(size: int) -> bytes:
    head = (
        b"From: Newsletter <news@example.com>\r\n"
        b"To: Reader <reader@example.net>\r\n"
        b"Subject: Your weekly digest\r\n"
        b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        b"Message-ID: <digest-20231114@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"List-Unsubscribe: <mailto:unsub@example.com>\r\n"
        b"\r\n"
    )
    # a pessimistic body: every line has a double space and a trailing space to canonicalize
    line = b"Lorem ipsum dolor sit amet,  consectetur adipiscing elit, sed do eiusmod \r\n"
    body = b""
    while len(head) + len(body) < size:
        body += line
    return head + body[: size - len(head) - 2] + b"\r\n"


def rate(work: Callable[[], object], seconds: float) -> tuple[float, int]:
    """(seconds per call, calls) over about `seconds` of wall time, at least 5 calls."""
    work()  # warm-up
    runs = 0
    start = time.perf_counter()
    deadline = start + seconds
    while runs < MAX_RUNS and (runs < 5 or time.perf_counter() < deadline):
        work()
        runs += 1
    return (time.perf_counter() - start) / runs, runs


def threaded_rate(work: Callable[[], object], threads: int, seconds: float) -> float:
    """Total calls per second with `threads` threads calling `work` for about `seconds`."""
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def loop(slot: int) -> None:
        while counts[slot] < MAX_RUNS and time.perf_counter() < deadline:
            work()
            counts[slot] += 1

    start = time.perf_counter()
    pool = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    args = parser.parse_args(argv)
    seconds = max(0.1, min(args.seconds, 30.0))

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ours = {
        "rsa-2048": DkimSigner([SigningKey("example.com", "r1", rsa_key)]),
        "ed25519": DkimSigner([SigningKey("example.com", "e1", ed_key)]),
    }
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    ed_seed = base64.b64encode(
        ed_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    )
    headers = [
        b"from",
        b"to",
        b"subject",
        b"date",
        b"message-id",
        b"mime-version",
        b"content-type",
        b"content-transfer-encoding",
        b"list-unsubscribe",
    ]

    def dkimpy(
        message: bytes, algorithm: bytes, key: bytes, selector: bytes
    ) -> Callable[[], bytes]:
        def call() -> bytes:
            return bytes(
                dkim.sign(
                    message,
                    selector,
                    b"example.com",
                    key,
                    canonicalize=(b"relaxed", b"relaxed"),
                    signature_algorithm=algorithm,
                    include_headers=headers,
                )
            )

        return call

    print(
        f"DKIM signing, relaxed/relaxed, ~{seconds:g} s per figure "
        f"(Python {sys.version.split()[0]})"
    )
    print(f"{'message':>8} {'signer':<22} {'sig/s':>9} {'ms/msg':>8} {'runs':>7}")
    for size in (2 * 1024, 50 * 1024):
        message = make_message(size)
        label = f"{size // 1024} KB"
        results: dict[str, float] = {}
        body = message.split(b"\r\n\r\n", 1)[1]
        rows: list[tuple[str, Callable[[], object]]] = [
            ("ours rsa-2048", partial(ours["rsa-2048"].sign, message, NOW)),
            ("ours ed25519", partial(ours["ed25519"].sign, message, NOW)),
            ("ours body canon+hash", partial(body_hash, body)),
            ("dkimpy rsa-2048", dkimpy(message, b"rsa-sha256", rsa_pem, b"r1")),
        ]
        try:
            import nacl  # noqa: F401  (dkimpy signs ed25519 only with PyNaCl)

            rows.append(("dkimpy ed25519", dkimpy(message, b"ed25519-sha256", ed_seed, b"e1")))
        except ImportError:
            pass
        for name, work in rows:
            per_call, runs = rate(work, seconds)
            results[name] = per_call
            print(f"{label:>8} {name:<22} {1 / per_call:>9.0f} {per_call * 1000:>8.3f} {runs:>7}")
        two = threaded_rate(partial(ours["rsa-2048"].sign, message, NOW), 2, seconds)
        print(f"{label:>8} {'ours rsa-2048, 2 thr':<22} {two:>9.0f} {'':>8} {'':>7}")
        speedup = results["dkimpy rsa-2048"] / results["ours rsa-2048"]
        print(
            f"{label:>8} ratio: ours rsa-2048 is {speedup:.1f}x dkimpy rsa-2048; "
            f"ours ed25519 is {results['dkimpy rsa-2048'] / results['ours ed25519']:.1f}x; "
            f"2 threads give {two * results['ours rsa-2048']:.2f}x one thread"
        )
        if "dkimpy ed25519" in results:
            print(
                f"{label:>8} ratio: ours ed25519 is "
                f"{results['dkimpy ed25519'] / results['ours ed25519']:.1f}x dkimpy ed25519"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
