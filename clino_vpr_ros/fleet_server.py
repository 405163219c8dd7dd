"""A real Milvus standalone server on this machine (the PyPI ``milvus`` wheel, "embedded Milvus").

For trying the fleet tier without a cluster (``clino-vpr fleet serve``), for the tests and for
``clino-vpr bench fleet``. It is the same server binary a Milvus standalone deployment runs; a
fleet in production points ``fleet_uri`` at a Milvus cluster instead (docs/fleet.md).

Differences from ``milvus.default_server``: the data directory is given, the client port can be
fixed so that a restarted server comes back at the same URI (the wheel's free-port probe does not
set SO_REUSEADDR, so a port with connections in TIME_WAIT would look taken), and stopping waits
for a clean shutdown instead of killing the server after one second. One such server per machine:
its embedded etcd listens on fixed ports (2379/2380), so a second one (tests while
``clino-vpr fleet serve`` runs) fails to start; point ``--uri`` at the running one instead.

Configuration that differs from the wheel's defaults (:data:`SERVER_CONFIG`, written into the
server's ``configs/milvus.yaml``; a cluster needs the same lines in its ``milvus.yaml`` or Helm
values, docs/fleet.md): Milvus 2.3 searches growing (not yet sealed and indexed) segments with an
"interim index", IVF with nlist 128 searched at nprobe 16, i.e. about an eighth of the data.
A segment grows to ~118 MB (~50k 512-d keyframes) before it is sealed and its HNSW index built,
so while robots stream keyframes most of a 100k fleet sits in growing segments and recall@1
against exact search fell to 0.66-0.78 (``clino-vpr bench fleet``). With the interim index off,
growing segments are searched brute force (exact; ~50k x 512-d inner products, a few ms),
and recall is the sealed segments' HNSW recall.
"""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

#: milvus.yaml keys set on the embedded server (dotted paths; values as YAML text)
SERVER_CONFIG: dict[str, str] = {
    # exact search of growing segments (the interim IVF index at nprobe 16/128 cost a third of recall@1)
    "queryNode.segcore.interimIndex.enableIndex": "false",
}


def _server_classes():
    try:
        import milvus
    except ImportError as e:
        raise RuntimeError("the embedded Milvus server needs the `milvus` wheel: pip install 'clino_vpr_ros[fleet]'") from e

    class _Config(milvus.MilvusServerConfig):
        def try_bind_port(self, port):  # noqa: ANN001, ANN202 - overrides the wheel's probe
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the Go server sets it too
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except OSError:
                sock.close()
                return None

    return milvus, _Config


class EmbeddedMilvus:
    """Start/stop a Milvus standalone server with its data under ``data_dir`` (kept across restarts)."""

    def __init__(self, data_dir: str | Path, port: int | None = None) -> None:
        milvus, config_cls = _server_classes()
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = config_cls()
        for key, value in SERVER_CONFIG.items():
            config.set(key, value)  # written into configs/milvus.yaml at start
        self._server = milvus.MilvusServer(config)
        self._server.set_base_dir(str(self.data_dir))
        self._port = port

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self) -> str:
        """Start (blocks until the server answers its health check); returns the URI."""
        if self._port is not None:
            self._server.config.configs["proxy_port"] = self._port  # same URI after a restart
        self._server.start()
        self._port = self._server.listen_port
        log.info("Milvus %s serving %s (data in %s)", _server_classes()[0].__version__, self.uri, self.data_dir)
        return self.uri

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM and wait for a clean shutdown; SIGKILL after ``timeout_s`` (acknowledged writes are
        in the server's write-ahead log either way)."""
        proc = self._server.server_proc
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.info("Milvus did not stop within %.0f s; killing it", timeout_s)
            proc.kill()
            proc.wait()
        self._server.server_proc = None
        for fd in self._server.proc_fds.values():
            fd.close()
        self._server.proc_fds.clear()

    def __enter__(self) -> EmbeddedMilvus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
