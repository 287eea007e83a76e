"""The head notices a worker whose connection closed at once, not after --worker-timeout: the
dispatcher (stream/remote/dispatch.py) on real sockets, plain and CURVE, without processes."""

from __future__ import annotations

import logging

import zmq

from stream.remote.dispatch import RemoteWorkers
from stream.remote.security import bind_curve_server, curve_client, load_client_keys
from stream.wire import messages
from tests.remote.conftest import IDENTITY, heard, one_frame, say
from tests.stream.conftest import wait_for

WITHIN_S = 10
"""Every wait here; the dispatcher's worker timeout is 60 s, so only a closed connection can
drop a worker in time."""


def join(head: RemoteWorkers, sock: zmq.Socket, credit: int) -> bytes:
    """`sock` says hello and its credit; returns its route once the head counts it."""
    before = set(head.workers)
    say(sock, "hello", identity=IDENTITY, name="w")
    say(sock, "credit", requests=credit)
    wait_for(lambda: not head.receive() and len(head.workers) > len(before), WITHIN_S, "a join")
    (route,) = set(head.workers) - before
    wait_for(lambda: not head.receive() and head.workers[route].credit == credit, WITHIN_S)
    return route


def until_gone(head: RemoteWorkers, route: bytes) -> list[messages.Batch]:
    """Run the head's loop (receive, maintain) until `route` is dropped; the batches handed back."""
    again: list[messages.Batch] = []

    def gone() -> bool:
        assert not head.receive()
        again.extend(head.maintain())
        return route not in head.workers

    wait_for(gone, WITHIN_S, "the closed connection's worker to be dropped")
    again.extend(head.maintain())
    return again


def test_a_closed_connection_drops_its_worker_and_hands_its_batches_back(link, caplog):
    head, dealer = link
    gone, alive = dealer(), dealer()
    route = join(head, gone, 2)
    join(head, alive, 1)
    sent = [one_frame(0), one_frame(1)]
    for chunk in sent:
        assert head.dispatch(chunk)  # the most credit first: both to `gone`
    assert len(head.workers[route].inflight) == 2
    with caplog.at_level(logging.INFO, logger="stream.remote.dispatch"):
        gone.close(linger=0)  # as a killed worker's: no goodbye
        again = until_gone(head, route)
    assert sorted(b.index[:, 1].tolist() for b in again) == sorted(
        b.index[:, 1].tolist() for b in sent
    )
    assert head.counters["resent"] == 2 and head.counters["lost"] == 1
    assert head.rejected == []  # a closed connection is no rejected message
    closed = [r.getMessage() for r in caplog.records if "connection closed" in r.getMessage()]
    assert closed == ["workers: w connection closed; 2 frame(s) it held go to others"], closed
    assert len(head.workers) == 1 and head.free == 1  # the other one is untouched
    assert head.dispatch(again[0])
    got = heard(alive)
    while got.kind == messages.COMMAND:  # its welcome and heartbeats first
        got = heard(alive)
    assert got.kind == messages.TENSOR


def test_an_idle_worker_that_closes_is_dropped_without_resending(link):
    head, dealer = link
    sock = dealer()
    route = join(head, sock, 1)
    sock.close(linger=0)
    assert until_gone(head, route) == []
    assert head.counters == {"resent": 0, "late": 0, "refused": 0, "joined": 1, "lost": 1}
    assert head.rejected == []


def test_a_worker_that_reconnects_with_the_same_identity_joins_again(link, zctx):
    """A DEALER with a fixed routing id dies holding a batch and comes back on a new connection:
    the old one is dropped, the batch handed back, and the new one joins and gets work."""
    head, dealer = link
    first = dealer()
    first.close(linger=0)  # only for the port: connect the fixed-identity DEALERs by hand
    endpoint = head.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def worker_with_id() -> zmq.Socket:
        sock = zctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.routing_id = b"worker-1"
        sock.connect(endpoint)
        return sock

    old = worker_with_id()
    route = join(head, old, 1)
    assert route == b"worker-1"
    assert head.dispatch(one_frame(7))
    old.close(linger=0)
    (chunk,) = until_gone(head, route)
    new = worker_with_id()
    assert join(head, new, 1) == b"worker-1"
    assert head.dispatch(chunk)
    got = heard(new)
    while got.kind == messages.COMMAND:
        got = heard(new)
    assert got.kind == messages.TENSOR and got.batch.index[:, 1].tolist() == [7]
    assert head.counters["joined"] == 2 and head.counters["lost"] == 1
    assert head.counters["resent"] == 1 and head.rejected == []


def test_with_curve_a_refused_client_is_never_a_worker_and_a_closed_one_is_dropped(
    zctx, head_keys, worker_keys, stranger_keys
):
    """The monitor sees every closed connection, a refused CURVE handshake's too: those only
    make the head look at its workers; the refused client never reaches the dispatcher."""
    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    router.unbind(router.getsockopt_string(zmq.LAST_ENDPOINT))
    endpoint = f"tcp://127.0.0.1:{port}"
    auth = bind_curve_server(zctx, router, endpoint, head_keys)
    head = RemoteWorkers(router, IDENTITY, max_batch=4, timeout_s=60)

    def client(folder) -> zmq.Socket:
        sock = zctx.socket(zmq.DEALER)
        sock.linger = 0
        curve_client(sock, load_client_keys(folder))
        sock.connect(endpoint)
        return sock

    try:
        trusted = client(worker_keys)
        route = join(head, trusted, 2)
        assert heard(trusted).meta["command"] == "welcome"
        assert not trusted.poll(0)
        stranger = client(stranger_keys)
        say(stranger, "hello", identity=IDENTITY, name="stranger")
        # The refused handshake closes a connection: the head probes its workers (a heartbeat,
        # which receive() sends only then) and keeps the one still connected.
        wait_for(
            lambda: not head.receive() and auth.refused >= 1 and trusted.poll(0),
            WITHIN_S,
            "the refusal and a probe",
        )
        assert heard(trusted).meta["command"] == "heartbeat"
        head.maintain()
        assert list(head.workers) == [route]
        assert head.dispatch(one_frame(0))
        trusted.close(linger=0)
        assert len(until_gone(head, route)) == 1
        assert head.counters["joined"] == 1 and head.counters["lost"] == 1
        assert head.rejected == []
    finally:
        head.close()
        auth.stop()
