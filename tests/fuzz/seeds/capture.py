#!/usr/bin/env python3
"""Seeds the fuzz corpora from real peers: ClientHellos that openssl s_client
and curl send, the flights openssl s_server answers with, requests as curl
and wrk send them, and PROXY v2 headers. Run from tests/fuzz; it writes
corpus/<target>/seed-*. Needs openssl and curl on PATH."""

import os
import socket
import struct
import subprocess
import tempfile
import threading
import time

CORPUS = "corpus"


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    with open(os.path.join(CORPUS, target, "seed-" + name), "wb") as f:
        f.write(data)


def receive(conn, quiet, enough):
    """What `conn` sends until `enough(data)`, EOF, or `quiet` seconds of
    silence."""
    conn.settimeout(quiet)
    data = b""
    try:
        while not enough(data):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return data


def first_flight(command):
    """What a client sends first, captured by a listener that answers
    nothing."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    argv = [a.replace("PORT", str(port)) for a in command]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listener.settimeout(10)
    conn, _ = listener.accept()
    # The first record (the ClientHello) and nothing after it.
    data = receive(conn, 1, lambda d: len(d) >= 5 and len(d) >= 5 + struct.unpack(">H", d[3:5])[0])
    conn.close()
    listener.close()
    proc.kill()
    proc.wait()
    return data


def server_flight(cert, key, args, hello):
    """What openssl s_server answers to `hello`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", cert,
         "-key", key, "-quiet", "-naccept", "1"] + args,
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            conn = socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            time.sleep(0.05)
    conn.sendall(hello)
    data = receive(conn, 0.5, lambda d: False)
    conn.close()
    proc.kill()
    proc.wait()
    return data


def main():
    tmp = tempfile.mkdtemp()
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=fuzz.example",
                    "-keyout", key, "-out", cert, "-days", "1"],
                   check=True, capture_output=True)
    clients = {
        "s_client-tls13": ["openssl", "s_client", "-connect", "127.0.0.1:PORT",
                           "-servername", "fuzz.example", "-tls1_3"],
        "s_client-tls12": ["openssl", "s_client", "-connect", "127.0.0.1:PORT",
                           "-servername", "fuzz.example", "-tls1_2", "-alpn", "http/1.1"],
        "s_client-chacha": ["openssl", "s_client", "-connect", "127.0.0.1:PORT",
                            "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
        "curl": ["curl", "-sk", "--max-time", "5", "https://127.0.0.1:PORT/"],
    }
    for name, command in clients.items():
        hello = first_flight(command)
        # Server mode: the ClientHello whole, and in 7-byte pieces.
        write("handshake", name, b"\x00\x00" + hello)
        write("handshake", name + "-pieces", b"\x00\x07" + hello)
        for version in ["-tls1_3", "-tls1_2"]:
            flight = server_flight(cert, key, [version], hello)
            if flight:
                # Client mode: a real server's answer (to another hello).
                write("handshake", f"s_server{version}-to-{name}", b"\x01\x00" + flight)
    requests = {
        "curl": b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nUser-Agent: curl/8.14.1\r\nAccept: */*\r\n\r\n",
        "wrk-pipelined": b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n" * 3,
        "post": b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "http10": b"GET / HTTP/1.0\r\n\r\n",
        "close": b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "chunked": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    }
    for name, request in requests.items():
        write("http", name, b"\x00" + request)
        write("http", name + "-pieces", b"\x03" + request)
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    v4 = bytes([127, 0, 0, 1, 127, 0, 0, 1]) + struct.pack(">HH", 40000, 443)
    v6 = bytes(15) + b"\x01" + bytes(15) + b"\x01" + struct.pack(">HH", 40000, 443)
    write("proxy", "v4", signature + b"\x21\x11" + struct.pack(">H", len(v4)) + v4 + b"\x16\x03\x01")
    write("proxy", "v6", signature + b"\x21\x21" + struct.pack(">H", len(v6)) + v6)
    write("proxy", "local", signature + b"\x20\x00\x00\x00")


if __name__ == "__main__":
    main()
