"""Pairing side-stream messages (odometry, depth) with an image by stamp: the nearest within a tolerance.

One rule for live and offline, so a bag replayed by ``clino-vpr bag`` poses its keyframes exactly
as the node does live: the side message whose stamp is nearest the image's, if that difference
is at most ``tolerance`` seconds (``sync_tolerance_s``); otherwise none (the keyframe stays
unposed). A tie goes to the earlier message.

* :func:`nearest_index` is the rule on a sorted stamp array.
* :class:`StampedBuffer` (the node): a bounded, thread-safe buffer of recent messages that can
  wait briefly for a stream that has not reached the image's stamp yet.
* :class:`StampedSeries` (the bag runner): every message of a stream, known in advance.

ROS-free: messages are opaque values here.
"""

from __future__ import annotations

import bisect
import collections
import math
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

#: a side stream counts as alive (worth waiting for) when its last message arrived this recently
STREAM_ALIVE_S = 1.0


def nearest_index(stamps: Sequence[float], stamp: float, tolerance: float) -> int:
    """Index of the stamp nearest ``stamp`` in ascending ``stamps`` when within ``tolerance`` s, else -1."""
    if not stamps or not math.isfinite(stamp):
        return -1
    i = bisect.bisect_left(stamps, stamp)
    best = min((j for j in (i - 1, i) if 0 <= j < len(stamps)), key=lambda j: (abs(stamps[j] - stamp), j))
    return best if abs(stamps[best] - stamp) <= tolerance else -1


class StampedSeries:
    """A whole side stream, offline: ``at(stamp, tolerance)`` applies :func:`nearest_index`."""

    def __init__(self, items: Iterable[tuple[float, Any]] = ()) -> None:
        pairs = sorted(items, key=lambda x: x[0])
        self._stamps = [s for s, _ in pairs]
        self._values = [v for _, v in pairs]

    def __len__(self) -> int:
        return len(self._stamps)

    def at(self, stamp: float, tolerance: float) -> Any:
        """The value nearest ``stamp`` within ``tolerance`` seconds, or None."""
        i = nearest_index(self._stamps, stamp, tolerance)
        return None if i < 0 else self._values[i]


class StampedBuffer:
    """Recent (stamp, message) pairs of a live side stream (bounded); thread-safe.

    ``clock`` is the monotonic clock used for "alive" and waiting (injectable for tests).
    """

    def __init__(self, maxlen: int, clock: Any = time.monotonic) -> None:
        self._items: collections.deque[tuple[float, Any]] = collections.deque(maxlen=maxlen)
        self._cond = threading.Condition()
        self._clock = clock
        self._last_arrival = -math.inf  # clock() at the newest message

    def add(self, stamp: float, msg: Any) -> None:
        with self._cond:
            self._items.append((stamp, msg))
            self._last_arrival = self._clock()
            self._cond.notify_all()

    def _behind(self, stamp: float) -> bool:
        """Nothing yet, or alive but no message at/after ``stamp`` yet: worth waiting for."""
        if not self._items:
            return True
        return max(s for s, _ in self._items) < stamp and self._clock() - self._last_arrival < STREAM_ALIVE_S

    def nearest(self, stamp: float, tolerance: float, wait_s: float = 0.0) -> Any:
        """The message nearest ``stamp`` within ``tolerance`` (:func:`nearest_index`), or None.

        Side streams race the image (separate DDS writers): when the stream has not reached
        ``stamp`` yet, wait up to ``wait_s`` for a message at or after it, as an approximate-time
        synchroniser would; the pairing rule itself is the offline one.
        """
        deadline = self._clock() + wait_s
        with self._cond:
            while self._behind(stamp) and self._clock() < deadline:
                self._cond.wait(max(0.0, deadline - self._clock()))
            items = sorted(self._items, key=lambda x: x[0])
        i = nearest_index([s for s, _ in items], stamp, tolerance)
        return None if i < 0 else items[i][1]

    def seen(self) -> bool:
        """Whether any message arrived yet."""
        return self._last_arrival > -math.inf

    def clear(self) -> None:
        with self._cond:
            self._items.clear()
