"""The replication stream's codec and state machine, bytes in and frames out (no sockets),
and the epoch file with the truncation point the handshake computes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from ferrymq.core.replication.epochs import EpochError, EpochFile, truncation_point
from ferrymq.protocols.replication import (
    Ack,
    Hello,
    LocalReplicationError,
    Refuse,
    RefuseReason,
    ReplicationConnection,
    ReplicationProtocolError,
    Side,
    State,
    Transfer,
    Welcome,
)
from ferrymq.protocols.replication.frames import decode, encode
from ferrymq.protocols.sentinels import NEED_DATA

HELLO = Hello("g1", "b", 1 << 20, 100, ((1, 0), (3, 50)))
WELCOME = Welcome("a", 4, 0, 300, ((1, 0), (3, 50), (4, 200)))


def pair() -> tuple[ReplicationConnection, ReplicationConnection]:
    return ReplicationConnection(Side.SLAVE), ReplicationConnection(Side.MASTER)


def deliver(data: bytes, to: ReplicationConnection) -> object:
    to.receive_data(data)
    return to.next_event()


@pytest.mark.parametrize("frame", [HELLO, WELCOME, Refuse(RefuseReason.SEGMENT_SIZE, "x"),
                                   Ack(12345), Transfer(4, 200, 250, 240, b"\x01\x02"),
                                   Transfer(4, 200, 250, 240)])
def test_every_frame_round_trips(frame: object) -> None:
    data = encode(frame)  # type: ignore[arg-type]
    length, kind = struct.unpack_from(">IB", data)
    assert length == len(data) - 4
    assert decode(kind, memoryview(data)[5:]) == frame


def test_a_whole_conversation_follows_the_table() -> None:
    slave, master = pair()
    assert deliver(slave.send(HELLO), master) == HELLO
    assert deliver(master.send(WELCOME), slave) == WELCOME
    assert deliver(slave.send(Ack(100)), master) == Ack(100)
    t1 = Transfer(3, 50, 100, 90, b"x" * 100)
    t2 = Transfer(4, 200, 200, 150, b"y" * 50)
    assert deliver(master.send(t1), slave) == t1
    assert deliver(master.send(t2), slave) == t2
    assert deliver(slave.send(Ack(250)), master) == Ack(250)
    assert slave.state is master.state is State.STREAMING


def test_frames_split_anywhere_are_reassembled() -> None:
    slave, master = pair()
    data = slave.send(HELLO)
    for b in data[:-1]:
        master.receive_data(bytes([b]))
        assert master.next_event() is NEED_DATA
    master.receive_data(data[-1:])
    assert master.next_event() == HELLO


def test_a_frame_out_of_turn_is_the_peers_fault() -> None:
    _, master = pair()
    master.receive_data(encode(Ack(5)))  # an ACK before HELLO
    with pytest.raises(ReplicationProtocolError) as err:
        master.next_event()
    assert err.value.remote
    refusal = master.refusal(err.value)
    assert refusal is not None
    assert decode(refusal[4], memoryview(refusal)[5:]).code is RefuseReason.PROTOCOL  # type: ignore[union-attr]
    assert master.state is State.CLOSED


def test_this_side_may_not_send_out_of_turn() -> None:
    slave, _ = pair()
    with pytest.raises(LocalReplicationError) as err:
        slave.send(Ack(1))
    assert not err.value.remote and err.value.side == "local"


def test_a_transfer_that_does_not_continue_the_stream_is_refused() -> None:
    slave, master = pair()
    deliver(slave.send(HELLO), master)
    deliver(master.send(WELCOME), slave)
    deliver(slave.send(Ack(100)), master)
    slave.receive_data(encode(Transfer(3, 50, 101, 0, b"z")))  # a gap
    with pytest.raises(ReplicationProtocolError, match="stream is at 100"):
        slave.next_event()


def test_epochs_never_go_back_on_the_stream() -> None:
    slave, master = pair()
    deliver(slave.send(HELLO), master)
    deliver(master.send(WELCOME), slave)
    deliver(slave.send(Ack(0)), master)
    deliver(master.send(Transfer(4, 0, 0, 0, b"a")), slave)
    slave.receive_data(encode(Transfer(3, 0, 1, 0, b"b")))
    with pytest.raises(ReplicationProtocolError, match="epoch went back"):
        slave.next_event()


def test_an_oversized_frame_is_refused_from_its_header() -> None:
    master = ReplicationConnection(Side.MASTER, max_frame=1024)
    master.receive_data(struct.pack(">IB", 1 << 30, 1))  # nothing of the body is needed
    with pytest.raises(ReplicationProtocolError, match="limit"):
        master.next_event()


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x00\x00\x01",  # length 0
    b"\x00\x00\x00\x02\x63\x00",  # unknown type
    struct.pack(">IB", 5, 4) + b"\x00\x00\x00\x00",  # an ACK one byte short
    struct.pack(">IB", 10, 4) + b"\x00" * 9,  # an ACK with a byte left over
    struct.pack(">IB", 9, 4) + struct.pack(">q", -1),  # a negative offset
    encode(HELLO)[:5] + b"\xff" * (len(encode(HELLO)) - 5),  # a HELLO full of 0xff
])
def test_garbage_is_a_protocol_error_never_a_crash(garbage: bytes) -> None:
    master = ReplicationConnection(Side.MASTER)
    master.receive_data(garbage)
    with pytest.raises(ReplicationProtocolError):
        master.next_event()


def test_a_connection_closed_inside_a_frame_is_an_error() -> None:
    master = ReplicationConnection(Side.MASTER)
    master.receive_data(encode(HELLO)[:7])
    with pytest.raises(ReplicationProtocolError):
        master.receive_data(b"")


def test_frames_validate_their_own_fields() -> None:
    with pytest.raises(ValueError):
        Hello("g", "n", 1, 0, ((2, 0), (1, 5)))  # epochs out of order
    with pytest.raises(ValueError):
        Transfer(1, 10, 5, 0)  # starts before its epoch
    with pytest.raises(ValueError):
        Welcome("n", 1, 10, 5, ())  # starts after its end


# ---------------------------------------------------------------- epochs

@pytest.mark.parametrize(("local", "local_end", "master", "master_end", "expected"), [
    # A slave that is a prefix of the master: keep everything.
    (((1, 0),), 100, ((1, 0), (2, 150)), 300, 100),
    # The old master wrote on in epoch 1 after the slave took over at 150 (epoch 2).
    (((1, 0),), 220, ((1, 0), (2, 150)), 300, 150),
    # The old master had its own epoch 2 the new master never saw (unclean history).
    (((1, 0), (2, 100)), 180, ((1, 0), (3, 150)), 300, 100),
    # The shared newest epoch: the shorter end wins.
    (((1, 0), (2, 50)), 400, ((1, 0), (2, 50)), 300, 300),
    # An empty epoch at the same offset as the next.
    (((1, 0), (2, 80), (3, 80)), 90, ((1, 0), (2, 80), (4, 85)), 200, 80),
    # Nothing shared.
    (((5, 0),), 10, ((1, 0),), 300, None),
    ((), 0, ((1, 0),), 300, None),
])
def test_the_truncation_point_is_where_the_shared_history_ends(
        local: tuple[tuple[int, int], ...], local_end: int,
        master: tuple[tuple[int, int], ...], master_end: int, expected: int | None) -> None:
    assert truncation_point(local, local_end, master, master_end) == expected


def test_the_epoch_file_appends_truncates_and_survives_a_reload(tmp_path: Path) -> None:
    f = EpochFile(str(tmp_path / "cluster")).load()
    assert f.entries == [] and f.epoch == -1
    f.append(1, 0)
    f.append(1, 0)  # again: nothing
    f.append(3, 100)
    f.append(4, 100)
    assert EpochFile(str(tmp_path / "cluster")).load().entries == [(1, 0), (3, 100), (4, 100)]
    with pytest.raises(EpochError):
        f.append(2, 200)  # an epoch going back
    with pytest.raises(EpochError):
        f.append(5, 50)  # a start going back
    f.truncate(100)
    assert EpochFile(str(tmp_path / "cluster")).load().entries == [(1, 0)]


def test_a_damaged_epoch_file_is_an_error_not_a_guess(tmp_path: Path) -> None:
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "epochs").write_bytes(b"1 0\n2 x\n")
    with pytest.raises(EpochError):
        EpochFile(str(tmp_path / "cluster")).load()
