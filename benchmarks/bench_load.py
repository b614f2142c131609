"""Real servers under a storm of duplicated notifications: uvicorn and gunicorn, SQLite and PostgreSQL ledgers.

    python benchmarks/bench_load.py [--n 1000] [--concurrency 64] [--only uvicorn|gunicorn]
        [--ledger sqlite|postgres] [--asgi-hook async|sync] [--threads 8] [--hook-ms 0] [--warmup 128]
        [--no-quickack] [--no-balance]

N unique signed notifications (27 fields, RSA2, fresh 2048-bit keys, all signed before the clock starts),
each sent 3 times at the same moment, on loopback, to ``load_app.py`` served by uvicorn ``--workers 2``
(``alipay.asgi(app)``) and by gunicorn ``-w 2 -k gthread`` (``alipay.wsgi(app)``), each with a SQLite
ledger (temp file) and a PostgreSQL ledger (a fresh table, dropped afterwards; ``ALIPAY_BENCH_POSTGRES``,
default ``postgresql://postgres@127.0.0.1:5432/test``). The client is one asyncio process with keep-alive
connections and a bounded number of requests in flight. Every notification none of whose copies got
``success`` is resent afterwards until it does, as Alipay would. Then all N are sent once more: the
"resends only" baseline. Goal on the 2-core machine, PostgreSQL rows: >= 300 unique notifications/s,
p99 < 250 ms, and duplicates answered no slower than the copies that ran the hook. Prints figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

from _shared import (
    APP_ID,
    FORM,
    SELLER_ID,
    Keys,
    fresh_keys,
    make_alipay,
    print_table,
    signed_body,
    typical_notify_fields,
)
from Crypto.Hash import SHA256
from Crypto.Signature import pkcs1_15

from alipay_middleware.ledger import DONE, Ledger, SQLiteLedger

HERE = Path(__file__).resolve().parent
NOTIFY = "/alipay/notify"
AMOUNT = "88.88"
COPIES = 3
POSTGRES = os.environ.get("ALIPAY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
GOAL_RATE = 300.0  # unique notifications per second, PostgreSQL rows
GOAL_P99 = 0.250  # seconds, every answer of the storm
DUPLICATE_SLACK = 1.10  # duplicates' p99 may exceed the hook copies' p99 by this factor (noise of a p99)
RESEND_ROUNDS = 100  # after the storm, per notification
PHASE_TIMEOUT = 600.0


# -- a lean HTTP/1.1 client on asyncio protocols -------------------------------------------------------------------

class ServerClosed(ConnectionError):
    pass


QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time; answers carry Content-Length (both servers do).

    With ``quickack`` (Linux) the client acknowledges every segment at once instead of delaying the ACK:
    uvicorn ``--workers N`` leaves Nagle on for accepted sockets (Kludex/uvicorn#3149), so the body of each
    answer after the first on a connection would wait for the client's delayed ACK, about 40 ms.
    """

    def __init__(self, quickack: bool = True) -> None:
        self.quickack = quickack and QUICKACK is not None
        self.sock: socket.socket | None = None
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, float]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sock = transport.get_extra_info("socket")
        if self.sock is not None:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            self.quickack = False

    def _ack_now(self) -> None:
        if self.quickack:  # not sticky: the kernel may fall back to delayed ACKs, so set before each exchange
            assert self.sock is not None
            self.sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ServerClosed(f"connection closed before the answer ({exc})"))

    def data_received(self, data: bytes) -> None:
        self._ack_now()
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        length, close = None, False
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length is None:
            raise ValueError(f"answer without Content-Length: {head[0]}")
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        if close:
            self.closed = True
            assert self.transport is not None
            self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((int(head[0].split()[1]), body, time.perf_counter()))

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes, float]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self._ack_now()
        self.transport.write(request)
        return self.waiter


@dataclass(frozen=True)
class Target:
    """Where and how the client connects."""

    port: int
    quickack: bool = True
    balance: bool = True  # as many connections on each worker (see open_connections)
    workers: int = 2

    def health(self) -> bytes:
        return f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode()


async def connect(target: Target) -> Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Connection(target.quickack), "127.0.0.1", target.port)
    return conn


async def open_connections(target: Target, count: int) -> tuple[list[Connection], Counter[str]]:
    """``count`` keep-alive connections and how many ended up on each worker (pid).

    Both servers share one listening socket between their workers, and whichever worker wakes first
    accepts a burst of connections: 63 connections opened at once were split 12/51 to 28/35 between the
    two workers. With keep-alive that split lasts the whole run, and one worker's GIL becomes the limit.
    With ``balance`` each connection asks ``/health`` which worker holds it, and surplus connections on a
    crowded worker are swapped for new ones until every worker holds its share (at most 20 rounds). The
    returned list alternates workers, so the copies of one notification land on different workers."""
    by_worker: dict[str, list[Connection]] = defaultdict(list)
    spare: list[Connection] = []
    share = math.ceil(count / target.workers)
    for _ in range(20 if target.balance else 1):
        have = sum(min(len(conns), share) for conns in by_worker.values())
        if have >= count or (not target.balance and by_worker):
            break
        fresh = await asyncio.gather(*(connect(target) for _ in range(count - have if not by_worker else
                                                                        2 * (count - have))))
        answers = await asyncio.gather(*(conn.send(target.health()) for conn in fresh))
        for conn, (_, body, _) in zip(fresh, answers, strict=True):
            pid = body.decode().removeprefix("ok pid=")
            if target.balance and len(by_worker[pid]) >= share:
                spare.append(conn)
            else:
                by_worker[pid].append(conn)
    chosen: list[Connection] = []
    queues = [list(conns) for conns in by_worker.values()]
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    spare.extend(conn for queue in queues for conn in queue)
    while len(chosen) < count:  # a worker never showed up: fill with whatever the kernel gives
        chosen.append(spare.pop() if spare else await connect(target))
    for conn in spare:
        if conn not in chosen and conn.transport is not None:
            conn.transport.close()
    placed = Counter(pid for pid, conns in by_worker.items() for conn in conns if conn in chosen)
    return chosen, placed


class Lane:
    """Connections used together: the ``COPIES`` copies of one notification go out on them at once."""

    def __init__(self, target: Target, conns: list[Connection]) -> None:
        self.target = target
        self.conns = conns

    def close(self) -> None:
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()

    async def send_together(self, requests: Sequence[bytes]) -> list[tuple[int, bytes, float]]:
        """Write every request before waiting for any answer; (status, body, seconds) each, 0 on error."""
        for i, conn in enumerate(self.conns):
            if conn.closed:  # the server closed it: reopen, not timed (neither server does so here)
                self.conns[i] = await connect(self.target)
        start = time.perf_counter()
        waiters = [conn.send(req) for conn, req in zip(self.conns, requests, strict=True)]
        answers = []
        for waiter in waiters:
            try:
                status, body, end = await waiter
                answers.append((status, body, end - start))
            except (ConnectionError, ValueError) as exc:
                answers.append((0, str(exc).encode(), time.perf_counter() - start))
        return answers


def request_bytes(port: int, body: bytes, request_id: str) -> bytes:
    head = (f"POST {NOTIFY} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: Mozilla/4.0\r\n"
            f"Content-Type: {FORM}\r\nContent-Length: {len(body)}\r\nX-Bench-Id: {request_id}\r\n\r\n")
    return head.encode("latin-1") + body


@dataclass
class Phase:
    wall: float  # seconds from the first write to the last answer
    answers: list[list[tuple[int, bytes, float]]]  # per batch, per request: status, body, seconds
    placed: Counter[str]  # connections per worker pid


async def run_lanes(target: Target, batches: Sequence[Sequence[bytes]], lanes: int, width: int,
                    cpu: tuple[int, CpuUse] | None = None) -> Phase:
    """Send every batch (its ``width`` requests at once, one per connection of a lane) over ``lanes``
    lanes; whichever lane is free takes the next batch. Connections are opened before the clock starts.
    ``cpu``: (server pid, where to put it) to account the CPU used while the clock runs."""
    lanes = max(1, min(lanes, len(batches)))
    conns, placed = await open_connections(target, lanes * width)
    pool = [Lane(target, conns[i * width:(i + 1) * width]) for i in range(lanes)]
    results: list[list[tuple[int, bytes, float]]] = [[] for _ in batches]
    todo = iter(range(len(batches)))

    async def drive(lane: Lane) -> None:
        for i in todo:  # one iterator shared by all lanes
            results[i] = await lane.send_together(batches[i])

    try:
        with cpu_accounting(*cpu) if cpu else nullcontext():
            start = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(drive(lane) for lane in pool)), PHASE_TIMEOUT)
            wall = time.perf_counter() - start
        return Phase(wall, results, placed)
    finally:
        for lane in pool:
            lane.close()


async def health_pids(target: Target, probes: int) -> set[str]:
    """The workers that answer ``probes`` concurrent GETs on fresh connections."""
    conns = await asyncio.gather(*(connect(target) for _ in range(probes)))
    try:
        answers = await asyncio.gather(*(conn.send(target.health()) for conn in conns))
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    return {body.decode() for status, body, _ in answers if status == 200}


async def keepalive_probe(target: Target, requests: int = 6) -> float:
    """Median seconds of the requests after the first on one keep-alive connection, the client ACKing
    the usual (delayed) way: about 40 ms when the server leaves Nagle on, well under 1 ms otherwise."""
    conn = await connect(replace(target, quickack=False))
    try:
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            _, _, end = await conn.send(target.health())
            times.append(end - start)
    finally:
        if conn.transport is not None:
            conn.transport.close()
    return percentile(times[1:], 50)


# -- servers -------------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(kind: str, port: int, threads: int) -> list[str]:
    if kind == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
                "--workers", "2", "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "5",
                "load_app:asgi_app"]
    return [sys.executable, "-m", "gunicorn", "--chdir", str(HERE), "--bind", f"127.0.0.1:{port}", "-w", "2",
            "-k", "gthread", "--threads", str(threads), "--no-control-socket", "--graceful-timeout", "5",
            "--log-level", "warning", "load_app:wsgi_app"]


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@contextmanager
def serve(kind: str, env: dict[str, str], workdir: Path, threads: int) -> Iterator[Server]:
    """Start the server in its own session, wait until both workers answer, always stop it afterwards."""
    port = free_port()
    log = workdir / f"{kind}.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(server_command(kind, port, threads), env=env, cwd=workdir, stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        pids: set[str] = set()
        while len(pids) < 2:  # both workers up (the first answer may come while the second still boots)
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                pids |= asyncio.run(health_pids(Target(port), 8))
            except OSError:
                pass
            if time.monotonic() > deadline:
                if pids:
                    break  # one worker answers: measure anyway, the hook log shows where hooks ran
                raise RuntimeError(f"{kind} did not answer within 30 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Server(kind, port, proc, log)
    finally:
        if proc.poll() is None:
            proc.terminate()  # both stop their workers on SIGTERM
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the session started above, and only it
                proc.wait(timeout=10)


# -- CPU accounting from /proc (Linux; skipped elsewhere) ----------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_snapshot() -> dict[int, tuple[str, int, float]]:
    """pid -> (command, parent pid, CPU seconds used so far) for every process we can read."""
    snapshot = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read().decode("latin-1")
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2:].split()
        snapshot[int(name)] = (comm, int(rest[1]), (int(rest[11]) + int(rest[12])) / TICK)
    return snapshot


def machine_ticks() -> tuple[int, int, int]:
    """(busy, stolen, total) jiffies of all CPUs since boot. Stolen: time the hypervisor ran something
    else while this VM wanted the CPU; it is neither busy nor idle."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    except (OSError, ValueError):
        return 0, 0, 0
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + steal + idle + iowait


@dataclass
class CpuUse:
    busy: float = math.nan  # fraction of all CPUs
    steal: float = math.nan  # fraction of all CPUs taken by the hypervisor
    seconds: dict[str, float] = field(default_factory=dict)  # group -> CPU seconds
    workers: dict[int, float] = field(default_factory=dict)  # server worker pid -> CPU seconds


@contextmanager
def cpu_accounting(server_pid: int, into: CpuUse) -> Iterator[None]:
    """CPU seconds used meanwhile by the server's processes, PostgreSQL's, this client and the rest."""
    before, ticks_before = proc_snapshot(), machine_ticks()
    yield
    after, ticks_after = proc_snapshot(), machine_ticks()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (_, ppid, _) in after.items():
        children[ppid].append(pid)
    server, stack = set(), [server_pid]
    while stack:
        pid = stack.pop()
        server.add(pid)
        stack.extend(children[pid])
    for pid, (comm, _, cpu) in after.items():
        used = cpu - before.get(pid, (comm, 0, 0.0))[2]
        group = ("server workers" if pid in server else "client" if pid == os.getpid()
                 else "PostgreSQL" if comm.startswith("postgres") else "other")
        into.seconds[group] = into.seconds.get(group, 0.0) + used
        if pid in server and pid != server_pid and used > 0:
            into.workers[pid] = used
    busy, steal, total = (after_ - before_ for after_, before_ in zip(ticks_after, ticks_before, strict=True))
    if total:
        into.busy, into.steal = busy / total, steal / total


# -- one configuration ---------------------------------------------------------------------------------------------

@dataclass
class Notification:
    number: int
    body: bytes
    key: str  # the ledger's dedupe key, worked out by the library itself


@dataclass
class Row:
    label: str
    ledger: str
    n: int
    storm: Phase = field(default_factory=lambda: Phase(math.nan, [], Counter()))  # per notification, per copy
    resends: int = 0  # requests sent after the storm until every notification was acknowledged
    unresolved: int = 0  # notifications still not acknowledged after RESEND_ROUNDS
    again: Phase = field(default_factory=lambda: Phase(math.nan, [], Counter()))  # per notification, one copy
    hook_calls: Counter[str] = field(default_factory=Counter)  # key -> calls (all events, warm-up included)
    hook_ids: set[str] = field(default_factory=set)  # request ids that ran a hook
    in_app: dict[str, float] = field(default_factory=dict)  # request id -> seconds inside the app (load_app)
    hook_pids: Counter[str] = field(default_factory=Counter)
    expected: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    cpu: CpuUse = field(default_factory=CpuUse)  # during the storm
    again_cpu: CpuUse = field(default_factory=CpuUse)  # during the resends-only phase
    keepalive: float = math.nan  # seconds per keep-alive request with delayed ACKs (keepalive_probe)
    notes: list[str] = field(default_factory=list)


def run_config(kind: str, ledger_kind: str, unique: list[Notification], warmup: list[Notification],
               args: argparse.Namespace, tmp: Path, key_files: tuple[Path, Path]) -> Row:
    label = f"{kind}+{'PostgreSQL' if ledger_kind == 'postgres' else 'SQLite'}"
    row = Row(label, ledger_kind, len(unique))
    workdir = tmp / label.replace("+", "-")
    workdir.mkdir()
    hook_log = workdir / "hook-calls.log"
    timing_log = workdir / "in-app-seconds.log"
    table = f"bench_load_{uuid.uuid4().hex[:12]}"
    if ledger_kind == "postgres":
        from alipay_middleware.ledger.postgres import PostgresLedger

        checker: Ledger = PostgresLedger(POSTGRES, table=table)  # creates the table before the workers start
        ledger_url = POSTGRES
    else:
        ledger_path = workdir / "ledger.sqlite3"
        checker = SQLiteLedger(str(ledger_path))
        ledger_url = f"sqlite:///{ledger_path}"
    env = dict(os.environ, ALIPAY_LOAD_LEDGER=ledger_url, ALIPAY_LOAD_PG_TABLE=table,
               ALIPAY_LOAD_APP_KEY=str(key_files[0]), ALIPAY_LOAD_ALIPAY_PUB=str(key_files[1]),
               ALIPAY_LOAD_APP_ID=APP_ID, ALIPAY_LOAD_SELLER_ID=SELLER_ID, ALIPAY_LOAD_AMOUNT=AMOUNT,
               ALIPAY_LOAD_HOOK_LOG=str(hook_log), ALIPAY_LOAD_TIMING_LOG=str(timing_log),
               ALIPAY_LOAD_HOOK="sync" if kind == "gunicorn" else args.asgi_hook,
               ALIPAY_LOAD_HOOK_MS=str(args.hook_ms), ALIPAY_LOAD_HOOK_THREADS=str(args.threads),
               PYTHONUNBUFFERED="1")
    lanes = max(1, args.concurrency // COPIES)
    print(f"  {label}: starting ...", flush=True)
    try:
        with serve(kind, env, workdir, args.threads) as server:
            port = server.port
            target = Target(port, quickack=args.quickack, balance=args.balance)
            row.keepalive = asyncio.run(keepalive_probe(target))

            def batches(items: list[Notification], prefix: str, copies: int) -> list[list[bytes]]:
                return [[request_bytes(port, item.body, f"{prefix}{item.number}.{c}") for c in range(copies)]
                        for item in items]

            storm = batches(unique, "s", COPIES)
            again = batches(unique, "b", 1)
            # Warm-up: other notifications, same pattern, untimed (threads, ledger connections, code paths).
            asyncio.run(run_lanes(target, batches(warmup, "w", COPIES), lanes, COPIES))
            row.storm = asyncio.run(run_lanes(target, storm, lanes, COPIES, (server.proc.pid, row.cpu)))
            # Alipay's resends: every notification none of whose copies got "success", until it does.
            pending = [i for i, answers in enumerate(row.storm.answers)
                       if not any(a[:2] == (200, b"success") for a in answers)]
            for attempt in range(1, RESEND_ROUNDS + 1):
                if not pending:
                    break
                time.sleep(0.05)
                resend = [[request_bytes(port, unique[i].body, f"r{unique[i].number}.{attempt}")] for i in pending]
                answers = asyncio.run(run_lanes(target, resend, args.concurrency, 1)).answers
                row.resends += len(resend)
                pending = [i for i, a in zip(pending, answers, strict=True) if a[0][:2] != (200, b"success")]
            row.unresolved = len(pending)
            # The baseline: every notification once more, all already done.
            row.again = asyncio.run(run_lanes(target, again, args.concurrency, 1, (server.proc.pid, row.again_cpu)))
        for line in hook_log.read_text().splitlines() if hook_log.exists() else []:
            key, pid, request_id = line.split()
            row.hook_calls[key] += 1
            row.hook_pids[pid] += 1
            row.hook_ids.add(request_id)
            if request_id == "-":  # the request id did not reach the hook: the copy split would be wrong
                row.notes.append(f"hook call without request id ({key}): 'hook copy' / 'duplicates' are unreliable")
        for line in timing_log.read_text().splitlines() if timing_log.exists() else []:
            request_id, seconds = line.split()
            row.in_app[request_id] = float(seconds)
        row.expected = [item.key for item in [*unique, *warmup]]
        row.done = {event.key for event in checker.events(status=DONE, limit=-1)}
        errors = [line for line in server.log.read_text(errors="replace").splitlines()
                  if "Error" in line or "Traceback" in line]
        if errors:
            row.notes.append(f"{len(errors)} error lines in the server log, e.g. {errors[0][:200]}")
    finally:
        checker.close()
        if ledger_kind == "postgres":
            drop_table(table)
    return row


def drop_table(table: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("public", table)))


def postgres_problem() -> str | None:
    try:
        import psycopg
    except ImportError as exc:
        return f'psycopg is not installed (pip install "psycopg[binary]"): {exc}'
    try:
        with psycopg.connect(POSTGRES, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"no PostgreSQL at {POSTGRES.split('@')[-1]} (set ALIPAY_BENCH_POSTGRES): {' '.join(str(exc).split())}"
    return None


def postgres_version() -> str:
    import psycopg

    with psycopg.connect(POSTGRES, connect_timeout=3) as conn:
        row = conn.execute("SELECT current_setting('server_version'), current_setting('synchronous_commit')")
        server, sync = row.fetchone() or ("?", "?")
    return f"PostgreSQL {server} (synchronous_commit={sync})"


# -- figures -------------------------------------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.1f}"


def statuses(answers: Sequence[tuple[int, bytes, float]]) -> str:
    counts = Counter(a[0] for a in answers)
    other = sum(n for status, n in counts.items() if status not in (200, 503))
    return f"{counts[200]} / {counts[503]} / {other}"


@dataclass
class Figures:
    unique_rate: float
    request_rate: float
    hook_copy: list[float]  # latencies of the storm copies that ran the hook
    duplicates: list[float]  # latencies of the other storm copies
    hook_copy_in_app: list[float]  # the same two, time inside the app only (no wait in the server's queue)
    duplicates_in_app: list[float]
    everything: list[float]
    calls_min: int
    calls_max: int
    lost: int

    @property
    def p99(self) -> float:
        return percentile(self.everything, 99)


def figures(row: Row) -> Figures:
    answers = [a for copies in row.storm.answers for a in copies]
    hook_copy: list[float] = []
    duplicates: list[float] = []
    hook_copy_in_app: list[float] = []
    duplicates_in_app: list[float] = []
    for item_answers, number in zip(row.storm.answers, range(row.n), strict=True):
        for copy, (_, _, seconds) in enumerate(item_answers):
            request_id = f"s{number}.{copy}"
            ran_hook = request_id in row.hook_ids
            (hook_copy if ran_hook else duplicates).append(seconds)
            if request_id in row.in_app:
                (hook_copy_in_app if ran_hook else duplicates_in_app).append(row.in_app[request_id])
    calls = [row.hook_calls.get(key, 0) for key in row.expected]
    return Figures(
        unique_rate=row.n / row.storm.wall, request_rate=len(answers) / row.storm.wall,
        hook_copy=hook_copy, duplicates=duplicates, hook_copy_in_app=hook_copy_in_app,
        duplicates_in_app=duplicates_in_app, everything=[a[2] for a in answers],
        calls_min=min(calls), calls_max=max(calls), lost=sum(1 for key in row.expected if key not in row.done),
    )


def goal(row: Row, f: Figures) -> str:
    if row.ledger != "postgres":
        return ""
    misses = [what for what, ok in (
        ("rate", f.unique_rate >= GOAL_RATE),
        ("p99", f.p99 < GOAL_P99),
        ("duplicates", percentile(f.duplicates_in_app, 99) <= DUPLICATE_SLACK * percentile(f.hook_copy_in_app, 99)),
        ("hooks", f.calls_min == f.calls_max == 1),
        ("lost", f.lost == 0),
    ) if not ok]
    return "PASS" if not misses else "MISS: " + ", ".join(misses)


def report(rows: list[Row], args: argparse.Namespace) -> None:
    storm_rows, again_rows, cpu_rows, in_app_rows = [], [], [], []
    for row in rows:
        f = figures(row)
        storm_rows.append([
            row.label, f"{f.unique_rate:,.0f}", f"{f.request_rate:,.0f}", f"{row.storm.wall:.2f} s",
            ms(percentile(f.hook_copy, 50)), ms(percentile(f.hook_copy, 99)),
            ms(percentile(f.duplicates, 50)), ms(percentile(f.duplicates, 99)), ms(f.p99),
            statuses([a for copies in row.storm.answers for a in copies]),
            f"{f.calls_min}" if f.calls_min == f.calls_max else f"{f.calls_min}-{f.calls_max}", str(f.lost),
            str(row.resends) + (f" ({row.unresolved} never)" if row.unresolved else ""), goal(row, f),
        ])
        in_app_rows.append([
            row.label, ms(percentile(f.hook_copy_in_app, 50)), ms(percentile(f.hook_copy_in_app, 99)),
            ms(percentile(f.duplicates_in_app, 50)), ms(percentile(f.duplicates_in_app, 99)),
            f"{percentile(f.duplicates_in_app, 99) / percentile(f.hook_copy_in_app, 99):.2f}x",
            f"{percentile(f.duplicates, 99) / percentile(f.hook_copy, 99):.2f}x",
        ])
        again_answers = [answers[0] for answers in row.again.answers]
        again = [a[2] for a in again_answers]
        again_p99 = percentile(again, 99)
        again_rows.append([
            row.label, f"{len(again) / row.again.wall:,.0f}", f"{row.again.wall:.2f} s", ms(percentile(again, 50)),
            ms(again_p99), statuses(again_answers), f"{percentile(f.duplicates, 99) / again_p99:.2f}x",
            " / ".join(f"{row.again_cpu.seconds.get(group, 0.0) / len(again) * 1000:.2f}"
                       for group in ("server workers", "PostgreSQL", "client")),
        ])
        cpu = row.cpu.seconds
        per_event = {group: cpu.get(group, 0.0) / row.n * 1000 for group in
                     ("server workers", "PostgreSQL", "client", "other")}
        cpu_rows.append([
            row.label, f"{row.cpu.busy:.0%}", f"{row.cpu.steal:.0%}", *(f"{v:.2f}" for v in per_event.values()),
            f"{sum(per_event.values()):.2f}",
            " + ".join(f"{v / row.n * 1000:.2f}" for _, v in sorted(row.cpu.workers.items())),
            " / ".join(str(n) for _, n in sorted(row.storm.placed.items())),
            " / ".join(str(n) for _, n in sorted(row.hook_pids.items())),
        ])
    lanes = max(1, args.concurrency // COPIES)
    print_table(f"Storm: {args.n} unique notifications x {COPIES} copies sent at the same moment, {lanes * COPIES} "
                f"requests in flight ({lanes} notifications x {COPIES}); latencies in ms",
                ["server + ledger", "unique/s", "requests/s", "wall", "hook copy p50", "p99", "duplicates p50", "p99",
                 "all p99", "200 / 503 / other", "hook calls per event", "lost", "resends needed", "goal"],
                storm_rows)
    print_table("The storm's copies inside the app: from the server calling the app to its answer being complete "
                "(no wait in the server's queue); ms",
                ["server + ledger", "hook copy p50", "p99", "duplicates p50", "p99", "duplicates/hook copy p99",
                 "the same, end to end"], in_app_rows)
    print_table(f"Resends only: the same {args.n} again, each once, all already done, {args.concurrency} in flight "
                "(the duplicates' baseline)",
                ["server + ledger", "requests/s", "wall", "p50 ms", "p99 ms", "200 / 503 / other",
                 "storm duplicates p99 / this p99", "CPU ms per request: server / PostgreSQL / client"], again_rows)
    print_table("CPU during the storm (from /proc): share of both CPUs busy and stolen by the hypervisor; CPU ms "
                "per unique notification",
                ["server + ledger", "busy", "steal", "server workers", "PostgreSQL", "client", "other", "total",
                 "of which each worker", "connections per worker", "hook calls per worker"], cpu_rows)
    warmups = len(rows[0].expected) - args.n if rows else 0
    first_of_kind = {row.label.split("+")[0]: row for row in reversed(rows)}
    probes = ", ".join(f"{kind} {ms(row.keepalive)} ms" for kind, row in reversed(first_of_kind.items()))
    ack = ("the client ACKs at once (TCP_QUICKACK)" if args.quickack and QUICKACK is not None
           else "the client delays its ACKs as usual (--no-quickack)")
    notes = [
        f"Goal (PostgreSQL rows): >= {GOAL_RATE:,.0f} unique notifications/s (N / storm wall time), p99 of all storm "
        f"answers < {GOAL_P99 * 1000:.0f} ms, duplicates",
        f"answered no slower than the copies that ran the hook (p99 inside the app, within {DUPLICATE_SLACK - 1:.0%}), "
        "hook calls exactly 1 per event, 0 lost events.",
        "Why inside the app: the 3 copies leave the client at the same instant, and the copy that runs the hook is, "
        "by definition, the one the",
        "server got to first; end to end, the other copies also carry their longer wait in the server's queue, "
        "which the middleware never sees.",
        "'hook copy': the copy of each notification whose request ran the hook (the hook logs the client's request "
        "id); 'duplicates': the other",
        "copies, answered 200 (already done) or 503 with Retry-After (hook running). 'resends needed': requests sent "
        "after the storm, as Alipay",
        "would, until every notification none of whose copies got 'success' had it. Hook calls and lost events "
        f"cover the N and the {warmups} warm-up",
        "notifications (sent first, untimed); 'lost': events not 'done' in the ledger at the end.",
        f"Keep-alive probe, GET /health with delayed ACKs, median per request after the first: {probes}. During the "
        f"runs {ack}.",
    ]
    print("\n" + "\n".join(f"   {line}" for line in notes))
    for row in rows:
        other, total = row.cpu.seconds.get("other", 0.0), sum(row.cpu.seconds.values())
        if total and other > 0.1 * total:
            print(f"   {row.label}: other processes used {other / total:.0%} of the CPU time during the storm; "
                  "its figures are disturbed, run again on a quiet machine.")
        for note in row.notes[:3]:
            print(f"   {row.label}: {note}")


def raw_verify_us(keys: Keys) -> float:
    """Best of 7 rounds of pkcs1_15 verify: how fast this machine is today, next to other runs."""
    digest = SHA256.new(b"x" * 350)
    signature = pkcs1_15.new(keys.alipay).sign(digest)
    verifier = pkcs1_15.new(keys.alipay.public_key())
    return min(timeit.repeat(lambda: verifier.verify(digest, signature), number=50, repeat=7)) / 50 * 1e6


# -- main ----------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="unique notifications (default 1000)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="requests in flight; rounded down to a multiple of 3 in the storm (default 64)")
    parser.add_argument("--only", choices=["uvicorn", "gunicorn"], help="one server only")
    parser.add_argument("--ledger", choices=["sqlite", "postgres"], help="one ledger only")
    parser.add_argument("--asgi-hook", choices=["async", "sync"], default="async",
                        help="the ASGI app's on_paid: async def (default) or a plain function; WSGI's is always sync")
    parser.add_argument("--threads", type=int, default=8,
                        help="gunicorn gthread threads per worker and the Alipay hook_threads (default 8)")
    parser.add_argument("--hook-ms", type=float, default=0.0, help="simulated work inside the hook (default 0)")
    parser.add_argument("--no-quickack", dest="quickack", action="store_false",
                        help="let the client delay its ACKs (shows uvicorn's ~40 ms per keep-alive request, see "
                             "Connection)")
    parser.add_argument("--no-balance", dest="balance", action="store_false",
                        help="keep the kernel's split of connections between workers (see open_connections)")
    parser.add_argument("--warmup", type=int, help="untimed notifications sent first (default 2 x concurrency)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the servers on the way out
    if args.n < 1 or args.concurrency < 1:
        parser.error("--n and --concurrency must be positive")
    warmup_n = args.warmup if args.warmup is not None else 2 * args.concurrency

    servers = [args.only] if args.only else ["uvicorn", "gunicorn"]
    ledgers = [args.ledger] if args.ledger else ["sqlite", "postgres"]
    loop = "uvloop" if find_spec("uvloop") else "asyncio"
    http = "httptools" if find_spec("httptools") else "h11"
    about = [f"Python {sys.version.split()[0]}", f"uvicorn {version('uvicorn')} ({http}, {loop})",
             f"gunicorn {version('gunicorn')} (gthread, {args.threads} threads)", f"SQLite {sqlite3.sqlite_version}"]
    if "postgres" in ledgers:
        problem = postgres_problem()
        if problem:
            print(f"NOTE: skipping the PostgreSQL rows: {problem}")
            ledgers.remove("postgres")
        else:
            about.append(postgres_version())
    print(", ".join(about) + f"; {os.cpu_count()} CPUs")
    if not ledgers:
        return
    print(f"ASGI hook: {args.asgi_hook} def; WSGI hook: sync def; hook work {args.hook_ms:g} ms; "
          f"Alipay hook_threads={args.threads}")
    print(f"Signing {args.n} + {warmup_n} (warm-up) notifications with a fresh 2048-bit key ...", flush=True)
    keys = fresh_keys()
    print(f"Machine check: raw RSA-2048 verify takes {raw_verify_us(keys):,.1f} us here (bench_core.py's floor).",
          flush=True)
    local = make_alipay(keys, ":memory:")  # only to work out the dedupe keys the servers will use

    def notification(number: int) -> Notification:
        body = signed_body(typical_notify_fields(number, AMOUNT), keys.alipay)
        fields, _ = local.protocol.parse(body, None)
        return Notification(number, body, local.protocol.event(fields).key)

    unique = [notification(i) for i in range(args.n)]
    warmup = [notification(args.n + i) for i in range(warmup_n)]
    local.close()

    rows: list[Row] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="alipay-bench-load-") as tmp_name:
        tmp = Path(tmp_name)
        key_files = (tmp / "app-private.pem", tmp / "alipay-public.pem")
        key_files[0].write_text(keys.app_private_pem)
        key_files[1].write_text(keys.alipay_public_pem)
        for kind in servers:
            for ledger_kind in ledgers:
                try:
                    rows.append(run_config(kind, ledger_kind, unique, warmup, args, tmp, key_files))
                except Exception as exc:  # a server that does not start, a client error: say so, go on
                    failed.append(f"{kind}+{ledger_kind}: {type(exc).__name__}: {exc}")
                    print(f"  {failed[-1]}", flush=True)
    if rows:
        report(rows, args)
    if failed:
        print("\nFAILED (no figures): " + "; ".join(line.splitlines()[0] for line in failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
