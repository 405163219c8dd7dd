"""`clino-vpr bench index` at toy sizes: its figures are right, not just printed."""

from __future__ import annotations

from clino_vpr_ros.bench.index import bench_map_io, bench_size, main


def test_bench_index_measures_exact_flat_search_and_reports_it(capsys) -> None:
    rows = {r.kind: r for r in bench_size(2000, 64, n_queries=20, kinds=["flat", "pq"], seed=0, shortlists=[])}
    # the flat index is exact, so its recall against the brute-force reference must be 1 (a wrong
    # reference or a broken exclusion of the recent past would show here); pq below 20k keyframes is exact too
    assert rows["flat"].recall_at_1 == 1.0 and rows["pq"].recall_at_1 == 1.0
    assert all(r.size == 2000 and r.query_ms_p99 >= r.query_ms_p50 > 0 for r in rows.values())
    save_s, load_s, size = bench_map_io(500, 64, seed=0)
    assert 500 * 64 * 4 < size < 500 * 64 * 4 * 4  # descriptors (float32) + poses, compressed little or none
    assert main(["--sizes", "2000", "--dim", "64", "--queries", "20", "--map-size", "500", "--memory-size", "200", "--memory-features", "50"]) == 0
    table = capsys.readouterr().out
    flat_line = next(line for line in table.splitlines() if line.startswith("flat ") and "2,000" in line)
    assert flat_line.split()[5] == "1.000"  # the recall column a user reads
    assert "session map, 500 keyframes" in table
    assert "session map memory, 200 keyframes x 50 SIFT features" in table  # the map's features loaded and read back
