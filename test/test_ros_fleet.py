"""The node with a fleet_uri, over real DDS and a real Milvus server: its keyframes arrive in the
fleet index as it goes, and with the server unreachable it keeps working and says so in /diagnostics."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from clino_vpr_ros.fleet import FleetConfig, MilvusFleetIndex, fleet_info
from clino_vpr_ros.ros.harness import fresh_domain_id
from clino_vpr_ros.synth import CONDITIONS, SessionConfig, generate_session, generate_town
from test_ros_node import _replay, _start, _stop

RUN = uuid.uuid4().hex[:6]
N_FRAMES = 24


@pytest.fixture(scope="module")
def drive():
    town = generate_town(5)
    cfg = SessionConfig(n_frames=128, rate_hz=2.0, image_size=(240, 320), start_time_s=500.0)  # one lap; we drive its start
    s = generate_session(town, "a", 5, CONDITIONS["day"], cfg)
    return s, [s.render(i).rgb for i in range(N_FRAMES)]


def test_node_writes_its_keyframes_to_the_fleet_and_keeps_working_without_it(shipped_model: Path, milvus_server,
                                                                              drive, tmp_path) -> None:
    s, frames = drive
    domain = fresh_domain_id()
    name = f"fleet-{RUN}"
    node, client = _start(domain, tmp_path, shipped_model, name, fleet_uri=milvus_server.uri, fleet_robot_id="r7")
    try:
        _replay(client, node, s, frames, range(N_FRAMES))
        keyframes = lambda: int(client.last_diagnostics()["engine_keyframes"])  # noqa: E731
        client.wait_until(lambda: client.last_diagnostics().get("fleet_written") == str(keyframes())
                          and keyframes() > 0, 120, "the node's keyframes in the fleet", node)
        d = client.last_diagnostics()
        assert d["fleet_online"] == "true" and d["fleet_pending"] == "0"
    finally:
        assert _stop(node, client) == 0
    (coll,) = fleet_info(milvus_server.uri)  # the node's collection (one per encoder)
    index = MilvusFleetIndex(FleetConfig(uri=milvus_server.uri), coll["fingerprint"], coll["descriptor_dim"])
    rows = list(index.iterate(["robot", "kf_id", "map_path"], expr=f'session == "{name}"'))
    index.close()
    assert len(rows) == int(d["engine_keyframes"]) and {r["robot"] for r in rows} == {"r7"}
    assert {r["map_path"] for r in rows} == {str((tmp_path / f"{name}.npz").resolve())}

    # a fleet server that does not answer: the node keeps making keyframes and reports it
    dead = f"dead-{RUN}"
    node, client = _start(domain, tmp_path, shipped_model, dead, fleet_uri="http://127.0.0.1:9")
    try:
        _replay(client, node, s, frames, range(N_FRAMES))
        client.wait_until(lambda: client.last_diagnostics().get("fleet_online") == "false"
                          and client.last_diagnostics().get("fleet_error", "") != "", 120, "the outage report", node)
        d = client.last_diagnostics()
        assert int(d["engine_keyframes"]) > 0 and int(d["fleet_pending"]) == int(d["engine_keyframes"])
        assert d["frames_processed"] == str(N_FRAMES)
    finally:
        assert _stop(node, client) == 0
