"""A pre-flight handshake on the coordinator's port before `jax.distributed.initialize`.

JAX's own join aborts the process (a C++ fatal error with a stack trace) when the coordinator
cannot be reached or processes are missing. This handshake finds those cases first, in Python,
within the same time bound, and turns them into one-line errors on every process:
  process 0 listens on the coordinator port, each other process connects (retrying until the
  deadline) and sends {"id": i, "n": N}; process 0 checks that N agrees, ids are unique and in
  range, and that all N-1 arrived, then answers every process "OK" or "ERR <reason>" and frees
  the port for JAX's coordination service.
"""

from __future__ import annotations

import json
import socket
import time

from ifp_jax.config import ConfigError


def _split(coordinator: str) -> tuple[str, int]:
    host, _, port = coordinator.rpartition(":")
    return host.strip("[]"), int(port)


def _serve(coordinator: str, n: int, timeout: float) -> None:
    _, port = _split(coordinator)
    deadline = time.time() + timeout
    server = socket.create_server(("", port), reuse_port=False)
    server.settimeout(0.5)
    peers: dict[int, socket.socket] = {}
    error = ""
    try:
        while len(peers) < n - 1 and not error and time.time() < deadline:
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            conn.settimeout(max(deadline - time.time(), 1.0))
            try:
                hello = json.loads(conn.makefile().readline())
                pid, their_n = int(hello["id"]), int(hello["n"])
            except (OSError, ValueError, KeyError):
                conn.close()
                continue
            if their_n != n:
                error = (f"process {pid} was started with --num-processes {their_n} but process 0 "
                         f"with {n}; give every process the same --num-processes")
            elif not 1 <= pid < n or pid in peers:
                error = (f"two processes claim --process-id {pid} (or it is out of 1..{n - 1}); "
                         f"give each process its own id in 0..{n - 1}")
            peers.setdefault(pid, conn)
            if peers[pid] is not conn:
                _reply(conn, "ERR " + error)
        if not error and len(peers) < n - 1:
            missing = sorted(set(range(1, n)) - set(peers))
            error = (f"only {len(peers) + 1} of {n} processes joined coordinator {coordinator} "
                     f"within {timeout:.0f}s (missing --process-id {missing}); start every "
                     f"process with the same --coordinator and --num-processes")
        for conn in peers.values():
            _reply(conn, "ERR " + error if error else "OK")
    finally:
        server.close()
    if error:
        raise ConfigError(error)


def _reply(conn: socket.socket, text: str) -> None:
    try:
        conn.sendall((text + "\n").encode())
        conn.recv(1)  # wait for the peer to close first (keeps TIME_WAIT off this port)
    except OSError:
        pass
    finally:
        conn.close()


def _join(coordinator: str, n: int, process_id: int, timeout: float) -> None:
    host, port = _split(coordinator)
    deadline = time.time() + timeout
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=2.0)
            break
        except OSError:
            if time.time() > deadline:
                raise ConfigError(
                    f"coordinator {coordinator} did not answer within {timeout:.0f}s; start "
                    f"process 0 there (it listens on that port), or fix --coordinator") from None
            time.sleep(0.5)
    with conn:
        conn.settimeout(max(deadline - time.time(), 1.0) + 5.0)
        conn.sendall((json.dumps({"id": process_id, "n": n}) + "\n").encode())
        try:
            answer = conn.makefile().readline().strip()
        except OSError:
            answer = ""
    if answer != "OK":
        reason = answer[4:] if answer.startswith("ERR ") else (
            f"no answer from coordinator {coordinator} within {timeout:.0f}s")
        raise ConfigError(reason)


def handshake(coordinator: str, num_processes: int, process_id: int, timeout: float) -> None:
    """Returns when all processes agree; raises ConfigError (one line) otherwise."""
    if process_id == 0:
        _serve(coordinator, num_processes, timeout)
    else:
        _join(coordinator, num_processes, process_id, timeout)
