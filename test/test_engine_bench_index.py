"""`clino-vpr bench index` runs end to end at toy sizes and prints its table."""

from __future__ import annotations

from clino_vpr_ros.bench.index import main


def test_bench_index_prints_latency_recall_and_map_io(capsys) -> None:
    assert main(["--sizes", "2000", "--dim", "64", "--queries", "20", "--map-size", "500"]) == 0
    out = capsys.readouterr().out
    assert "flat" in out and "hnsw" in out and "recall@1" in out
    assert "session map, 500 keyframes" in out and "save" in out and "load" in out
