"""The deployment on one machine: a SuperLink and N SuperNodes as separate processes on loopback.

Checkout tooling (it runs ``scripts/make_certificates.sh`` and bundles ``flower_app/`` of this
checkout), hence here and not in the package; the apps it starts are the installed
``fedpatchcore``.

TLS on (certificates from ``scripts/make_certificates.sh``), SuperNode authentication on (each
SuperNode's public key registered with ``flwr supernode register``), nothing installed at run
time, telemetry and update checks off. Each SuperNode is a site that reads only its own data
folder (``--node-config "data-root=... client-id=..."``). The tests, the benchmark and anyone
trying the deployment before going to real sites use it::

    python scripts/flower_loopback.py --project .        # one site per client of the partition
    python scripts/flower_loopback.py --project . --site metal=/data/metal --site qc=/data/qc

It runs exactly the commands of docs/deployment.md; with ``count_bytes`` the SuperNodes reach
the SuperLink through a byte-counting TCP relay, which measures what crossed the "network".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import fedpatchcore

REPO = Path(__file__).resolve().parents[1]  # the checkout this script belongs to
CERTIFICATE_SCRIPT = REPO / "scripts" / "make_certificates.sh"
FLOWER_APP = REPO / "flower_app"
CONNECTION = "fedpatchcore-loopback"
ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "KEDRO_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args[0]} exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


class ByteCountingRelay:
    """A TCP relay 127.0.0.1:<port> -> 127.0.0.1:<target> counting the bytes it forwards."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.upstream = 0  # SuperNodes -> SuperLink
        self.downstream = 0  # SuperLink -> SuperNodes
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, "upstream"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, "downstream"), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(chunk))
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def reset(self) -> None:
        with self._lock:
            self.upstream = self.downstream = 0

    def close(self) -> None:
        self._closed = True
        self._server.close()


@dataclass
class LoopbackFederation:
    """SuperLink + one SuperNode per site, on loopback, TLS and SuperNode authentication on."""

    workdir: Path
    project: Path  # the Kedro project the ServerApp serves (its conf/ and data/)
    sites: Mapping[str, Path]  # client id -> the site's own data folder
    count_bytes: bool = False
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    relay: ByteCountingRelay | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.project = Path(self.project).resolve()
        self.certificates = self.workdir / "certificates"
        self.flwr_home = self.workdir / "flwr_home"
        self.port = free_port()
        self.env = {**os.environ, **ENVIRONMENT, "FLWR_HOME": str(self.flwr_home)}
        # The SuperLink and SuperNodes start the apps in subprocesses: they import this fedpatchcore.
        source = str(Path(fedpatchcore.__file__).resolve().parents[1])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)

    # ------------------------------------------------------------------ processes

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir, start_new_session=True
        )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _flwr(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["flwr", *args], env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=timeout_s
        )
        if result.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def start(self, timeout_s: float = 120) -> LoopbackFederation:
        self.workdir.mkdir(parents=True, exist_ok=True)
        keys = [self.certificates / f"supernode_{i}.pub" for i in range(1, len(self.sites) + 1)]
        if not (self.certificates / "ca.crt").exists() or not all(key.exists() for key in keys):
            subprocess.run(
                ["bash", str(CERTIFICATE_SCRIPT), str(self.certificates), str(len(self.sites))],
                check=True,
                capture_output=True,
            )
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certificates / "ca.crt"}"\n'
        )
        c = self.certificates
        superlink = self._start(
            "superlink",
            [
                "flower-superlink",
                "--ssl-ca-certfile", str(c / "ca.crt"),
                "--ssl-certfile", str(c / "server.pem"),
                "--ssl-keyfile", str(c / "server.key"),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1",
                "--port", str(self.port),
            ],
        )  # fmt: skip
        wait_for_port(self.port, timeout_s, superlink)
        fleet_port = self.port
        if self.count_bytes:
            self.relay = ByteCountingRelay(self.port)
            fleet_port = self.relay.port
        for i, (client_id, data_root) in enumerate(self.sites.items(), 1):
            self._flwr("supernode", "register", str(c / f"supernode_{i}.pub"), CONNECTION)
            self.start_node(client_id, i, data_root, fleet_port)
        return self

    def start_node(self, client_id: str, index: int, data_root: Path, fleet_port: int) -> None:
        node_config = (
            f'data-root="{Path(data_root).resolve()}" client-id="{client_id}" '
            f'scratch-dir="{self.workdir / "scratch" / client_id}"'
        )
        self._start(
            f"supernode_{client_id}",
            [
                "flower-supernode",
                "--superlink", f"127.0.0.1:{fleet_port}",
                "--root-certificates", str(self.certificates / "ca.crt"),
                "--auth-supernode-private-key", str(self.certificates / f"supernode_{index}"),
                "--node-config", node_config,
                "--port", str(free_port()),
            ],
        )  # fmt: skip

    def wait_for_log(self, name: str, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log(name):
                return
            time.sleep(0.2)
        raise TimeoutError(f"'{text}' not in {name}.log after {timeout_s:.0f} s:\n{self.log(name)[-3000:]}")

    def kill(self, name: str) -> None:
        """Kill a process and its children at once (a site losing power)."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def run(self, env: str = "", variant: str = "federated", timeout_s: float = 600) -> subprocess.CompletedProcess:
        """``flwr run flower_app`` against this SuperLink; returns once the run has finished."""
        run_config = f'project-path="{self.project}" env="{env}" variant="{variant}"'
        return self._flwr("run", str(FLOWER_APP), CONNECTION, "--run-config", run_config, "--stream", timeout_s=timeout_s)

    def run_in_background(self, env: str = "", variant: str = "federated") -> subprocess.Popen:
        run_config = f'project-path="{self.project}" env="{env}" variant="{variant}"'
        return self._start("flwr_run", ["flwr", "run", str(FLOWER_APP), CONNECTION, "--run-config", run_config, "--stream"])

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
        if self.relay is not None:
            self.relay.close()

    def __enter__(self) -> LoopbackFederation:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def sites_from_partition(project: Path, variant: str, folder: Path) -> dict[str, Path]:
    """One data folder per client of ``variant``'s partition (as the Kedro partition node made it)."""
    from fedpatchcore.flower.project import open_project
    from fedpatchcore.flower.site import make_site_folder

    opened = open_project(project)
    chosen = opened.variant(variant)
    dataset_root = Path(opened.parameters["dataset"]["root"])
    dataset_root = dataset_root if dataset_root.is_absolute() else opened.path / dataset_root
    return {
        cid: make_site_folder(
            opened.catalog.load(f"{chosen.partition_owner}.client_{cid}.training_images"), folder / cid, dataset_root
        )
        for cid in chosen.client_ids
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", default=".", help="the Kedro project the ServerApp serves")
    parser.add_argument(
        "--site",
        action="append",
        help="client_id=data_folder, once per site (default: a folder per client of the project's partition)",
    )
    parser.add_argument("--env", default="", help="the project's conf environment for the run")
    parser.add_argument("--variant", default="federated", help="which federated variant to run")
    parser.add_argument("--workdir", default="data/09_flower_loopback", help="certificates, logs, Flower home, sites")
    args = parser.parse_args(argv)
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir / "flwr_home", ignore_errors=True)
    if args.site:
        sites = {k: Path(v) for k, v in (item.split("=", 1) for item in args.site)}
    else:
        shutil.rmtree(workdir / "sites", ignore_errors=True)
        sites = sites_from_partition(Path(args.project), args.variant, workdir / "sites")
    with LoopbackFederation(workdir, Path(args.project), sites) as federation:
        started = time.perf_counter()
        result = federation.run(env=args.env, variant=args.variant)
        print(result.stdout[-2000:])
        print(
            f"flwr run took {time.perf_counter() - started:.1f} s with {len(sites)} SuperNodes; logs in {workdir}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
