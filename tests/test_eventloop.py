"""The select() loop the supervisor runs on: other threads and signal handlers wake it, sockets
call back on its thread, and nothing is written to a closed loop's pipe."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

from pool.eventloop import EventLoop

DEADLINE = 10.0


def test_a_call_from_another_thread_wakes_a_loop_sleeping_without_timeout() -> None:
    loop = EventLoop()
    loop.bind()
    ran: list[int] = []
    threading.Timer(0.05, loop.call_from_thread, args=(ran.append, threading.get_ident())
                    ).start()
    started = time.monotonic()
    loop.run_once(None)  # would block forever if the pipe did not wake it
    assert ran == [threading.get_ident()], "the call did not run on the loop's thread"
    assert time.monotonic() - started < DEADLINE
    loop.close()


def test_a_signal_handler_posting_wakes_the_loop() -> None:
    loop = EventLoop()
    loop.bind()
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda s, _f: loop.call_from_thread(seen.append, s))
    try:
        threading.Timer(0.05, os.kill, args=(os.getpid(), signal.SIGUSR1)).start()
        end = time.monotonic() + DEADLINE
        while not seen and time.monotonic() < end:
            loop.run_once(DEADLINE)
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)
        loop.close()


def test_readers_and_writers_call_back_until_removed() -> None:
    loop = EventLoop()
    left, right = socket.socketpair()
    got: list[bytes] = []
    writable: list[bool] = []
    loop.add_reader(left.fileno(), lambda: got.append(left.recv(100)))
    loop.set_writer(left.fileno(), lambda: writable.append(True))
    right.sendall(b"hello")
    loop.run_once(DEADLINE)
    assert got == [b"hello"] and writable == [True]
    loop.set_writer(left.fileno(), None)
    loop.remove_reader(left.fileno())
    right.sendall(b"again")
    loop.run_once(0.05)
    assert got == [b"hello"] and writable == [True]
    left.close()
    right.close()
    loop.close()


def test_a_closed_loop_drops_calls_instead_of_writing_to_a_reused_descriptor() -> None:
    loop = EventLoop()
    loop.close()
    reader, writer = os.pipe()  # may reuse the numbers the loop's pipe had
    try:
        loop.call_from_thread(print, "never")
        os.set_blocking(reader, False)
        try:
            data = os.read(reader, 10)
        except BlockingIOError:
            data = b""
        assert data == b""
    finally:
        os.close(reader)
        os.close(writer)
