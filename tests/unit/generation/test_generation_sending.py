"""SendQueue: responses go out on one worker thread in the order they were sent; a failed send
is reported once, drops what follows for that stream only, and reads as a cancellation."""

from __future__ import annotations

import threading

from mlapi_backend.generation_sending import SendQueue

FINAL = 1


class FakeSender:
    """Records (stream, response, flags) in one shared list; can fail from its n-th send."""

    def __init__(self, name: str, log: list, fail_at: int | None = None) -> None:
        self.name = name
        self.log = log
        self.fail_at = fail_at
        self.sends = 0
        self.threads: set[str] = set()

    def send(self, response: object = None, flags: int = 0) -> None:
        self.threads.add(threading.current_thread().name)
        self.sends += 1
        if self.fail_at is not None and self.sends >= self.fail_at:
            raise RuntimeError(f"{self.name}: sender closed")
        self.log.append((self.name, response, flags))

    def is_cancelled(self) -> bool:
        return False


def test_responses_keep_their_order_and_leave_the_calling_thread() -> None:
    log: list = []
    errors: list = []
    queue = SendQueue(lambda rid, exc: errors.append((rid, exc)))
    senders = {name: FakeSender(name, log) for name in "ab"}
    wrapped = {name: queue.sender(s, f"id-{name}") for name, s in senders.items()}
    for index in range(50):
        for name in "ab":
            wrapped[name].send(f"{name}{index}")
    for name in "ab":
        wrapped[name].send(flags=FINAL)
    queue.close()
    assert errors == []
    for name in "ab":
        mine = [(response, flags) for who, response, flags in log if who == name]
        assert mine == [(f"{name}{i}", 0) for i in range(50)] + [(None, FINAL)]
        assert threading.current_thread().name not in senders[name].threads
    assert len(log) == 102


def test_a_failed_send_is_reported_once_and_stops_only_its_stream() -> None:
    log: list = []
    errors: list = []
    queue = SendQueue(lambda rid, exc: errors.append((rid, str(exc))))
    broken = queue.sender(FakeSender("broken", log, fail_at=3), "id-broken")
    healthy = queue.sender(FakeSender("healthy", log), "id-healthy")
    for index in range(10):
        broken.send(index)
        healthy.send(index)
    queue.close()
    assert errors == [("id-broken", "broken: sender closed")]
    assert [r for who, r, _ in log if who == "broken"] == [0, 1]
    assert [r for who, r, _ in log if who == "healthy"] == list(range(10))
    # the generation loop polls is_cancelled: a stream that cannot be sent to stops
    assert broken.is_cancelled() and not healthy.is_cancelled()
    assert broken.sender.sends == 3, "nothing is sent after the failure"


class Cancellable(FakeSender):
    """Cancelled once ``cancel`` is called; counts the is_cancelled calls and their threads."""

    def __init__(self) -> None:
        super().__init__("c", [])
        self.is_cancelled_event = threading.Event()
        self.asked_from: list[str] = []

    def is_cancelled(self) -> bool:
        self.asked_from.append(threading.current_thread().name)
        return self.is_cancelled_event.is_set()


def test_before_the_first_send_the_loop_asks_the_sender_itself() -> None:
    queue = SendQueue(lambda rid, exc: None)
    real = Cancellable()
    sender = queue.sender(real, "id")
    assert not sender.is_cancelled()
    real.is_cancelled_event.set()
    assert sender.is_cancelled()
    assert real.asked_from == [threading.current_thread().name] * 2
    queue.close()


def test_after_a_send_the_worker_asks_and_the_loop_reads_a_flag() -> None:
    queue = SendQueue(lambda rid, exc: None)
    real = Cancellable()
    sender = queue.sender(real, "id")
    sender.send("first")
    queue.executor.submit(lambda: None).result()  # the first send is done
    assert not sender.is_cancelled()
    real.is_cancelled_event.set()
    sender.send("second")
    queue.executor.submit(lambda: None).result()
    assert sender.is_cancelled()
    me = threading.current_thread().name
    # asked once by the worker after each send; the loop's polls cost no round trip
    assert len(real.asked_from) == 2 and me not in real.asked_from
    sender.send(flags=FINAL)
    queue.close()
    assert len(real.asked_from) == 2, "not asked after the final response"


def test_caught_up_waits_until_at_most_n_responses_are_pending() -> None:
    import asyncio

    release = threading.Event()
    log: list = []

    class Slow(FakeSender):
        def send(self, response: object = None, flags: int = 0) -> None:
            release.wait(timeout=30)
            super().send(response, flags)

    queue = SendQueue(lambda rid, exc: None)
    sender = queue.sender(Slow("s", log), "id")

    async def go() -> list[int]:
        for index in range(3):
            sender.send(index)
        waiting = asyncio.ensure_future(sender.caught_up(1))
        await asyncio.sleep(0.05)
        seen = [len(log), int(waiting.done())]
        release.set()
        await waiting
        return [*seen, len(log) >= 2]

    # nothing was sent while the sends were held, so the stream waited; once they went, it
    # resumed with at most one of its responses still to send
    assert asyncio.run(go()) == [0, 0, True]
    queue.close()
    assert [r for _, r, _ in log] == [0, 1, 2]
