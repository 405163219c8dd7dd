"""The node's drop-oldest queue, deterministically (no DDS, no sleeps): a burst keeps the newest frame."""

from __future__ import annotations

import threading

from clino_vpr_ros.ros import node


def test_drop_oldest_queue_hands_over_the_newest_frame_and_counts_the_replaced_ones() -> None:
    q = node.DropOldestQueue()
    for frame in range(30):  # a burst faster than the worker: only the newest survives
        q.put(frame)
    assert q.get(timeout=0.0) == 29 and q.dropped == 29
    assert q.get(timeout=0.0) is None  # nothing piles up behind it
    q.put("next")
    assert q.get(timeout=0.0) == "next" and q.dropped == 29


def test_drop_oldest_queue_wakes_the_worker_on_put_and_on_close() -> None:
    q = node.DropOldestQueue()
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(q.get(timeout=60.0)))
    worker.start()
    q.put("frame")
    worker.join(timeout=60.0)
    assert got == ["frame"]
    worker = threading.Thread(target=lambda: got.append(q.get(timeout=60.0)))
    worker.start()
    q.close()
    worker.join(timeout=60.0)
    assert got == ["frame", None] and not worker.is_alive()
