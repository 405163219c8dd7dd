"""The pairing rule (clino_vpr_ros/sync.py), deterministically (no DDS, no sleeps)."""

from __future__ import annotations

import threading

import pytest

from clino_vpr_ros.sync import StampedBuffer, StampedSeries, nearest_index

pytestmark = pytest.mark.runtime


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_nearest_within_tolerance_picks_the_closest_side_message_before_or_after() -> None:
    stamps = [10.0, 10.1, 10.2, 10.3]
    assert nearest_index(stamps, 10.14, 0.05) == 1
    assert nearest_index(stamps, 10.16, 0.05) == 2  # after the image: the nearest, not the last before
    assert nearest_index([10.25, 10.5], 10.375, 0.2) == 0  # a tie goes to the earlier message
    assert nearest_index(stamps, 10.5, 0.05) == -1 and nearest_index(stamps, 9.9, 0.05) == -1
    assert nearest_index([], 10.0, 1.0) == -1 and nearest_index(stamps, float("nan"), 1.0) == -1


def test_offline_series_and_live_buffer_pair_the_same_messages() -> None:
    """The bag runner (StampedSeries) and the node (StampedBuffer) must pose a keyframe alike."""
    odom = [(100.0 + 0.1 * i + 0.03, f"odom{i}") for i in range(50)]  # odometry 30 ms after each image
    series = StampedSeries(reversed(odom))  # arrival order does not matter
    buffer = StampedBuffer(maxlen=500, clock=FakeClock())
    for stamp, msg in odom:
        buffer.add(stamp, msg)
    for i in range(50):
        image = 100.0 + 0.1 * i
        assert series.at(image, 0.05) == buffer.nearest(image, 0.05) == f"odom{i}"
        assert series.at(image, 0.02) is None and buffer.nearest(image, 0.02) is None


def test_buffer_does_not_wait_for_a_dead_stream_and_waits_for_a_live_one() -> None:
    clock = FakeClock()
    buffer = StampedBuffer(maxlen=10, clock=clock)
    buffer.add(1.0, "a")
    clock.t = 5.0  # last message 5 s ago: the stream is dead, the answer comes at once from what is there
    assert buffer.nearest(1.04, 0.05, wait_s=100.0) == "a"

    live = StampedBuffer(maxlen=10)
    live.add(1.0, "a")
    found: list[object] = []
    waiter = threading.Thread(target=lambda: found.append(live.nearest(1.2, 0.05, wait_s=60.0)))
    waiter.start()  # behind the image's stamp and alive: waits for the next message, not 60 s
    live.add(1.21, "b")
    waiter.join(timeout=60.0)
    assert found == ["b"]


def test_buffer_is_bounded() -> None:
    buffer = StampedBuffer(maxlen=3, clock=FakeClock())
    for i in range(10):
        buffer.add(float(i), i)
    assert buffer.nearest(0.0, 0.5) is None and buffer.nearest(9.0, 0.5) == 9 and buffer.seen()
    buffer.clear()
    assert buffer.nearest(9.0, 0.5) is None
