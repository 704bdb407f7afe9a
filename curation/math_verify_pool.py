"""Answer verification with math_verify, time-bounded in worker processes.

``math_verify`` bounds its own work with ``signal.alarm``, which only works in the main thread of
the main interpreter: a Beam worker thread, a Dagster op thread or a thread pool gets
``ValueError: signal only works in main thread``. So every call here passes
``parsing_timeout=None`` / ``timeout_seconds=None`` and :class:`VerifierPool` bounds time from the
outside instead: each worker is a process that works through its items one at a time, so the item
it is on is always known; a worker that overruns the per-item limit (sympy can take minutes on
adversarial LaTeX such as ``(x+1)^{2000}``) or dies is killed and replaced, and only that item
gets ``verify_timeout`` / ``verify_error``. The pool starts its workers with ``forkserver`` (or
``spawn``), never ``fork``, so a parent holding threads or a Beam harness is never forked.

Reasons on :class:`VerifyOutcome`: ``None`` (verified correct), ``wrong_answer``, ``no_answer``
(the completion had no extractable final answer), ``verify_timeout``, ``verify_error``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from math_verify import parse as mv_parse
from math_verify import verify as mv_verify

_LETTER = re.compile(r"^\(?\s*([A-Ja-j])\s*\)?[.:]?$")
# A plain number with thousands separators: "1,450,000", "-2,125.5" (GSM8K golds and answers).
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _letter(s: str) -> str | None:
    """The option letter of a multiple-choice answer ("B", "(b)", "B."), else None."""
    m = _LETTER.match(s.strip())
    return m.group(1).upper() if m else None


def _clean_number(s: str) -> str:
    s = s.strip()
    return s.replace(",", "") if _THOUSANDS.match(s) else s


def parse_answer(text: str) -> list:
    """``math_verify.parse`` of an answer string (the content of a box, or a bare '18').

    The string is wrapped in ``\\boxed{}`` so math_verify's boxed extractor takes it whole (a bare
    string would go through its 'last number in the text' heuristics). No signal timeout.
    """
    return mv_parse("\\boxed{" + _clean_number(text) + "}", parsing_timeout=None)


def verify(gold: str, answer: str | None) -> bool:
    """Is ``answer`` equivalent to ``gold``? ``math_verify.verify(parse(gold), parse(answer))``.

    Gold goes first (math_verify is not symmetric: assignments and intervals are read from the
    gold side). Multiple-choice golds (a single letter) are compared as letters. Runs without
    timeouts: call it in a :class:`VerifierPool` worker, or only on trusted inputs.
    """
    settled = _settle(gold, answer)
    if settled is not None:
        return settled
    return bool(
        mv_verify(
            parse_answer(str(gold).strip()),
            parse_answer(str(answer).strip()),
            timeout_seconds=None,
            raise_on_error=False,
        )
    )


def _settle(gold: str | None, answer: str | None) -> bool | None:
    """The verdict when it needs no sympy (empty side, option letters, identical strings), else
    None. Cheap and cannot hang, so :class:`VerifierPool` runs it in the calling process."""
    if answer is None or not str(answer).strip() or gold is None or not str(gold).strip():
        return False
    gold, answer = str(gold).strip(), str(answer).strip()
    gl = _letter(gold)
    if gl is not None:
        al = _letter(answer)
        if al is not None:
            return gl == al
    if _clean_number(gold) == _clean_number(answer):
        return True  # identical strings (most correct GSM8K answers)
    return None


@dataclass(frozen=True)
class VerifyOutcome:
    """Result of one verification: ``correct`` is None when it could not be decided."""

    correct: bool | None
    reason: str | None = None  # None | wrong_answer | no_answer | verify_timeout | verify_error


CORRECT = VerifyOutcome(True, None)
WRONG = VerifyOutcome(False, "wrong_answer")
NO_ANSWER = VerifyOutcome(False, "no_answer")


def verify_outcome(gold: str, answer: str | None) -> VerifyOutcome:
    """:func:`verify` as an outcome (in-process, no time bound)."""
    if answer is None or not str(answer).strip():
        return NO_ANSWER
    return CORRECT if verify(gold, answer) else WRONG


def _worker_main(conn: Connection) -> None:
    """Worker loop: receive (key, gold, answer), send (key, 'ok', bool) or (key, 'error', msg)."""
    # math_verify warns once per process that its timeouts are off: we bound time ourselves.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Warm up before reporting ready: the first call loads the LaTeX grammar and sympy's lazy
    # modules (about a second), which must not count against the first item's time limit.
    verify("\\frac{1}{2}", "0.5")
    conn.send(("ready", None, None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        key, gold, answer = msg
        try:
            conn.send((key, "ok", verify(gold, answer)))
        except Exception as e:  # noqa: BLE001 - a failure is a value on the item, not a dead batch
            conn.send((key, "error", f"{type(e).__name__}: {e}"[:500]))


class _Worker:
    """One worker process and the items sent to it, in the order it works through them."""

    def __init__(self, ctx: mp.context.BaseContext, start_timeout_s: float):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.start_timeout_s = start_timeout_s
        self.ready = False
        self.queue: deque[int] = deque()  # item indices sent and not answered; queue[0] is running
        self.head_start = 0.0  # when queue[0] started (the previous answer, or its dispatch)
        self.done = 0

    def wait_ready(self) -> None:
        if self.ready:
            return
        if not self.conn.poll(self.start_timeout_s):
            self.kill()
            raise RuntimeError(f"verifier worker did not start within {self.start_timeout_s}s")
        try:
            tag, _, _ = self.conn.recv()
        except (EOFError, OSError) as e:
            self.kill()
            raise RuntimeError(f"verifier worker died while starting (exit code {self.proc.exitcode})") from e
        if tag != "ready":
            raise RuntimeError(f"verifier worker sent {tag!r} before 'ready'")
        self.ready = True

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(2)
        self.kill()


class VerifierPool:
    """Verify (gold, answer) pairs in ``workers`` processes with a per-item time limit.

    >>> with VerifierPool(workers=2, timeout_s=5) as pool:
    ...     pool.verify_many([("18", "18"), ("\\frac{1}{2}", "0.5"), ("3", None)])
    [VerifyOutcome(correct=True, reason=None), VerifyOutcome(correct=True, reason=None),
     VerifyOutcome(correct=False, reason='no_answer')]

    Pairs that need no sympy (no answer, option letters, identical strings) are settled in the
    calling process. The others go to the workers, ``prefetch`` at a time each so that a worker
    never waits for the parent between items. A worker works through its items in order, so the
    running item is always the oldest unanswered one, and its time limit starts when the previous
    answer came back: on overrun the worker is killed and replaced, that item gets
    ``verify_timeout`` and the items queued behind it go back to the queue. A worker that dies
    (segfault, OOM kill) is replaced the same way (``verify_error`` for its running item).
    ``max_items_per_worker`` recycles workers to bound sympy's cache growth. Not thread-safe:
    one caller at a time (from any thread).
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        context: str = "forkserver",
        prefetch: int = 4,
        max_items_per_worker: int | None = 20_000,
        start_timeout_s: float = 120.0,
    ):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if prefetch < 1:
            raise ValueError("prefetch must be >= 1")
        if context not in ("forkserver", "spawn"):
            raise ValueError("context must be 'forkserver' or 'spawn' (fork is unsafe with threads)")
        self.timeout_s = float(timeout_s)
        self.prefetch = prefetch
        self.max_items_per_worker = max_items_per_worker
        self.start_timeout_s = start_timeout_s
        self._ctx = mp.get_context(context)
        self._workers = [_Worker(self._ctx, start_timeout_s) for _ in range(workers)]
        for w in self._workers:
            w.wait_ready()
        self.stats = {"items": 0, "in_parent": 0, "timeouts": 0, "errors": 0, "restarts": 0}

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for w in self._workers:
            w.stop()
        self._workers = []

    def __del__(self):  # best effort: do not leave worker processes behind
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers (monitoring; they change when a worker is replaced)."""
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    @property
    def in_flight(self) -> int:
        """Items sent to workers and not answered yet."""
        return sum(len(w.queue) for w in self._workers)

    def _replace(self, wi: int, todo: deque[int]) -> None:
        """Kill worker ``wi``, put its unanswered items back at the front of ``todo``, start anew."""
        old = self._workers[wi]
        todo.extendleft(reversed(old.queue))
        old.queue.clear()
        old.kill()
        self._workers[wi] = _Worker(self._ctx, self.start_timeout_s)
        self._workers[wi].wait_ready()
        self.stats["restarts"] += 1

    def verify_many(self, pairs: Iterable[tuple[str, str | None]]) -> list[VerifyOutcome]:
        """One :class:`VerifyOutcome` per (gold, answer) pair, in input order."""
        if not self._workers:
            raise RuntimeError("pool is closed")
        items: Sequence[tuple[str, str | None]] = list(pairs)
        out: list[VerifyOutcome | None] = [None] * len(items)
        todo: deque[int] = deque()
        for i, (gold, answer) in enumerate(items):
            if answer is None or not str(answer).strip():
                out[i] = NO_ANSWER
                continue
            settled = _settle(gold, answer)
            if settled is None:
                todo.append(i)
            else:
                out[i] = CORRECT if settled else WRONG
                self.stats["in_parent"] += 1
        self.stats["items"] += len(items)
        cap = self.max_items_per_worker

        while todo or self.in_flight:
            sent = True
            while todo and sent:  # dispatch round-robin, one item per worker per round
                sent = False
                for wi in range(len(self._workers)):
                    w = self._workers[wi]
                    if not todo or len(w.queue) >= self.prefetch or (cap and w.done + len(w.queue) >= cap):
                        continue
                    i = todo[0]
                    try:
                        w.conn.send((i, str(items[i][0]), str(items[i][1])))
                    except (OSError, ValueError):  # died while idle: replace, send again next round
                        self._replace(wi, todo)
                        sent = True
                        continue
                    todo.popleft()
                    if not w.queue:
                        w.head_start = time.monotonic()
                    w.queue.append(i)
                    sent = True
            busy = [w for w in self._workers if w.queue]
            if not busy:
                continue
            first_deadline = min(w.head_start for w in busy) + self.timeout_s
            ready = {id(c) for c in wait([w.conn for w in busy], timeout=max(0.0, first_deadline - time.monotonic()))}
            for wi in range(len(self._workers)):
                w = self._workers[wi]
                if not w.queue:
                    continue
                if id(w.conn) in ready:
                    try:
                        while w.queue and w.conn.poll():  # drain every answer already there
                            key, tag, value = w.conn.recv()
                            i = w.queue.popleft()
                            if key != i:
                                raise RuntimeError(f"verifier worker answered {key}, expected {i}")
                            w.head_start = time.monotonic()
                            w.done += 1
                            if tag == "ok":
                                out[i] = CORRECT if value else WRONG
                            else:
                                out[i] = VerifyOutcome(None, "verify_error")
                                self.stats["errors"] += 1
                    except (EOFError, OSError):  # the worker died on its running item
                        out[w.queue.popleft()] = VerifyOutcome(None, "verify_error")
                        self.stats["errors"] += 1
                        self._replace(wi, todo)
                        continue
                    if cap and w.done >= cap and not w.queue:
                        self._replace(wi, todo)
                elif time.monotonic() >= w.head_start + self.timeout_s:
                    out[w.queue.popleft()] = VerifyOutcome(None, "verify_timeout")
                    self.stats["timeouts"] += 1
                    self._replace(wi, todo)
        return out  # type: ignore[return-value]
