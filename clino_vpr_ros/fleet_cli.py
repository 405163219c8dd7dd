"""``clino-vpr fleet``: push session maps to a fleet index, show what it holds, merge from it, serve one.

    clino-vpr fleet push --uri http://fleet-server:19530 --robot r1 MAP.npz [MAP.npz ...]
    clino-vpr fleet status --uri http://fleet-server:19530
    clino-vpr fleet merge --uri http://fleet-server:19530 --sessions S1 S2 -- --out merged.npz [merge options]
    clino-vpr fleet serve --data ~/.clino_vpr/milvus [--port 19530]

``push`` is idempotent (keyframes already stored are skipped) and refuses a map built by another
encoder than the fleet's. The maps must stay where they are (shared storage): the fleet index
stores their path and reads verification features from them.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from clino_vpr_ros.fleet import FleetConfig, MilvusFleetIndex, fleet_info, records_from_map
from clino_vpr_ros.session_map import SessionMap


def _push(args: argparse.Namespace) -> int:
    maps = []
    for path in args.maps:
        try:
            maps.append((path, SessionMap.load(path)))  # read-only; never writes the map
        except (FileNotFoundError, ValueError) as e:
            print(f"clino-vpr fleet push: {e}", file=sys.stderr)
            return 2
    fps = {(m.fingerprint, m.descriptor_dim) for _, m in maps}
    if len(fps) > 1:
        print(f"clino-vpr fleet push: the maps come from different encoders {sorted(fps)}; push them to different fleets",
              file=sys.stderr)
        return 2
    fingerprint, dim = fps.pop()
    index = MilvusFleetIndex(FleetConfig(uri=args.uri, collection=args.collection), fingerprint, dim)
    total_new = 0
    try:
        for path, smap in maps:
            robot = args.robot or smap.header.get("robot_id") or "unknown"
            new = index.add(records_from_map(smap, robot, path))
            total_new += new
            print(f"{path}: {len(smap)} keyframes of session(s) {', '.join(smap.session_ids)} (robot {robot}): "
                  f"{new} added, {len(smap) - new} already in the fleet")
        print(f"fleet {args.uri} collection {index.name}: {index.count()} keyframes ({total_new} added now)")
    except ValueError as e:  # another encoder than the fleet's
        print(f"clino-vpr fleet push: refused: {e}", file=sys.stderr)
        return 2
    finally:
        index.close()
    return 0


def _status(args: argparse.Namespace) -> int:
    collections = fleet_info(args.uri, args.collection)
    if not collections:
        print(f"fleet {args.uri}: no clino-vpr keyframes yet")
        return 0
    report = []
    for c in collections:
        index = MilvusFleetIndex(FleetConfig(uri=args.uri, collection=args.collection), c["fingerprint"], c["descriptor_dim"])
        try:
            report.append(index.status())
        finally:
            index.close()
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for st in report:
        print(f"{st['backend']}: encoder {', '.join(st['fingerprints'])} ({st['descriptor_dim']}-d), consistency "
              f"{st['consistency']}")
        print(f"  {len(st['robots'])} robot(s): {', '.join(st['robots'])}; {len(st['sessions'])} session(s); "
              f"{st['keyframes']} keyframes")
        for sid, s in sorted(st["sessions"].items()):
            print(f"  {s['robot']:<16} {sid:<32} {s['keyframes']:>9} keyframes  {', '.join(s['maps'])}")
    return 0


def _merge(args: argparse.Namespace, merge_argv: list[str]) -> int:
    from clino_vpr_ros import merge

    found: dict[str, list[str]] = {s: [] for s in args.sessions}
    for c in fleet_info(args.uri, args.collection):
        index = MilvusFleetIndex(FleetConfig(uri=args.uri, collection=args.collection), c["fingerprint"], c["descriptor_dim"])
        try:
            for s, p in index.session_maps(args.sessions).items():
                found[s] += p
        finally:
            index.close()
    missing = [s for s, p in found.items() if not p]
    if missing:
        print(f"clino-vpr fleet merge: session(s) {missing} not in the fleet at {args.uri}", file=sys.stderr)
        return 2
    paths: list[str] = []
    for s in args.sessions:  # in the order given: the first session is merge's reference
        paths += [p for p in found[s] if p not in paths]
    print(f"merging {len(paths)} map(s) from the fleet: {', '.join(paths)}")
    return merge.main(paths + merge_argv)


def _serve(args: argparse.Namespace) -> int:
    from clino_vpr_ros.fleet_server import EmbeddedMilvus

    server = EmbeddedMilvus(args.data, args.port)
    uri = server.start()
    print(f"Milvus standalone serving {uri} (data in {args.data}); Ctrl+C stops it", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    merge_argv: list[str] = []
    if "--" in argv:
        argv, merge_argv = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(prog="clino-vpr fleet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("push", "upload session maps (idempotent)"), ("status", "robots, sessions, keyframes, encoders"),
                        ("merge", "clino-vpr merge over sessions found in the fleet (merge options after --)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--uri", required=True, help="Milvus URI, e.g. http://fleet-server:19530")
        p.add_argument("--collection", default=FleetConfig().collection, help="collection name prefix")
        if name == "push":
            p.add_argument("maps", nargs="+", type=Path)
            p.add_argument("--robot", help="robot id of these maps (default: the map header's robot_id, else 'unknown')")
        if name == "status":
            p.add_argument("--json", action="store_true")
        if name == "merge":
            p.add_argument("--sessions", nargs="+", required=True, help="session ids; the first is the reference")
    p = sub.add_parser("serve", help="run a local Milvus standalone server (the `milvus` wheel)")
    p.add_argument("--data", type=Path, default=Path.home() / ".clino_vpr" / "milvus")
    p.add_argument("--port", type=int, default=19530)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "push":
            return _push(args)
        if args.cmd == "status":
            return _status(args)
        if args.cmd == "merge":
            return _merge(args, merge_argv)
        return _serve(args)
    except RuntimeError as e:
        print(f"clino-vpr fleet: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - pymilvus' connection errors: say what and where
        if type(e).__module__.startswith("pymilvus"):
            print(f"clino-vpr fleet: Milvus at {getattr(args, 'uri', '?')} failed: {e}", file=sys.stderr)
            return 3
        raise
