"""Which loop closures go to LIO-SAM's ``loop_closure_detection`` topic, and when.

LIO-SAM (ROS 2 branch, ``mapOptmization.cpp``) takes ``[t_current, t_previous]`` and resolves both
stamps against the keyframes of *its own* running session; it rejects a pair closer than
``historyKeyframeSearchTimeDiff`` (30 s), keeps the last 5 messages and consumes one per loop
cycle (``loopClosureFrequency``, 1 Hz). So only a closure it can place and will not reject is
sent:

* verified (geometrically) -- an unverified candidate is never sent, whatever ``publish_unverified``;
* intra-session -- a stamp of an earlier session would land on LIO-SAM's first keyframe;
  inter-session closures stay on ``loop_closures`` for a multi-session back end;
* ``|t_query - t_match| >= min_time_diff_s``;
* at most one per ``min_period_s``: a closure that arrives sooner waits in a one-slot queue,
  where a better one (more inliers, then newer) replaces it and the replaced one is counted
  (``superseded``), never silently lost.

ROS-free: the node publishes what :meth:`LioSamGate.poll` returns; ``clino-vpr bag`` writes the
same selection, stamped when it would have been published.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from clino_vpr_ros.engine import LoopClosure


@dataclass(frozen=True)
class LioSamConfig:
    """min_time_diff_s: LIO-SAM's historyKeyframeSearchTimeDiff; min_period_s: 1 / loopClosureFrequency."""

    min_time_diff_s: float = 30.0
    min_period_s: float = 1.0

    def __post_init__(self) -> None:
        if not (self.min_time_diff_s >= 0 and self.min_period_s >= 0):
            raise ValueError(f"min_time_diff_s and min_period_s must be >= 0, got {self.min_time_diff_s}, {self.min_period_s}")


def rejection_reason(closure: LoopClosure, cfg: LioSamConfig = LioSamConfig()) -> str:
    """Why LIO-SAM cannot use ``closure`` ("" when it can)."""
    if not closure.verified:
        return "not geometrically verified"
    if closure.inter_session:
        return (f"inter-session ({closure.query_session} -> {closure.match_session}): LIO-SAM places stamps "
                "in its own session only")
    dt = abs(closure.query_stamp - closure.match_stamp)
    if dt < cfg.min_time_diff_s:
        return f"|t_query - t_match| = {dt:.1f} s < {cfg.min_time_diff_s:.1f} s (LIO-SAM would reject it)"
    return ""


def _better(a: LoopClosure, b: LoopClosure) -> bool:
    """Whether ``a`` should be sent rather than ``b``: more inliers, then the newer query."""
    return (a.inliers, a.query_stamp) > (b.inliers, b.query_stamp)


class LioSamGate:
    """Rate-limited selection of the closures for LIO-SAM; thread-safe.

    ``offer`` every published closure; ``poll(now)`` returns the one to send now (or None). ``now``
    is any monotonic clock in seconds, the same one on every call (the node: time.monotonic();
    the bag runner: the query stamps).
    """

    def __init__(self, cfg: LioSamConfig = LioSamConfig()) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._pending: LoopClosure | None = None
        self._last_sent = -math.inf
        self.sent = self.refused = self.superseded = 0

    def offer(self, closure: LoopClosure) -> str:
        """Queue ``closure`` if LIO-SAM can use it; returns the rejection reason ("" when queued)."""
        reason = rejection_reason(closure, self.cfg)
        with self._lock:
            if reason:
                self.refused += 1
            elif self._pending is None:
                self._pending = closure
            else:
                self.superseded += 1
                if _better(closure, self._pending):
                    self._pending = closure
        return reason

    def poll(self, now: float) -> LoopClosure | None:
        """The pending closure if ``min_period_s`` has passed since the last one sent, else None."""
        with self._lock:
            if self._pending is None or now - self._last_sent < self.cfg.min_period_s:
                return None
            closure, self._pending = self._pending, None
            self._last_sent = now
            self.sent += 1
            return closure

    @property
    def pending(self) -> bool:
        """Whether a closure waits for its period."""
        with self._lock:
            return self._pending is not None

    def next_send_time(self) -> float:
        """Earliest ``now`` at which :meth:`poll` may send again."""
        with self._lock:
            return self._last_sent + self.cfg.min_period_s


def schedule(closures: list[LoopClosure], cfg: LioSamConfig = LioSamConfig()) -> list[tuple[float, LoopClosure]]:
    """Offline: (publish time, closure) pairs LIO-SAM would receive from closures found at their query stamps.

    Replays :class:`LioSamGate` with the query stamps as the clock: each closure is offered when
    found; a pending one is sent as soon as the period allows.
    """
    gate = LioSamGate(cfg)
    out: list[tuple[float, LoopClosure]] = []

    def send(now: float) -> None:
        closure = gate.poll(now)
        if closure is not None:
            out.append((now, closure))

    for c in sorted(closures, key=lambda c: c.query_stamp):
        if gate.next_send_time() <= c.query_stamp:
            send(gate.next_send_time())  # a pending closure went out when its period was over
        gate.offer(c)
        send(c.query_stamp)
    send(gate.next_send_time())
    return out
