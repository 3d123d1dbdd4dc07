"""TLS with mutual certificates between every omax process, and loopback-only defaults.

Real processes, configured only through Dask's own settings (environment variables
``DASK_DISTRIBUTED__COMM__TLS__*`` and ``..._REQUIRE_ENCRYPTION``): ``dask scheduler
--protocol tls`` with the omax preload, two ``dask worker tls://…`` and ``omax serve
--scheduler tls://…``, each holding a certificate for its own role only, all signed
by a CA made in the test. The front door imports the demo model and serves a chat to
the official ``ollama`` client; a worker then fetches the model's replica from its
peer over TLS. A client without a certificate, with one from another CA, or over
plain TCP cannot reach the scheduler, and is told so within seconds.

The embedded cluster of ``omax serve`` (no ``--scheduler``) listens on 127.0.0.1
only: scheduler, nanny, worker and dashboard.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client
from distributed.security import Security

from tests.e2e.conftest import DEMO, start_server, stop_server
from tests.plugins.dask_procs import start_scheduler, start_worker, stop, tail

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

ollama = pytest.importorskip("ollama")

REFUSED_S = 10.0  # a refused client has heard so, or still waits unanswered, by then


# ---- certificates -------------------------------------------------------------


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, name: str, cert, key) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def _builder(subject: str, issuer: str, public_key):
    from cryptography import x509

    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


class CA:
    """A certificate authority made for one test; ``issue`` signs node certificates."""

    def __init__(self, folder: Path, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        self.folder, self.name = folder, name
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            _builder(name, name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = _write(folder, name, self.cert, self.key)[0]

    def issue(self, name: str) -> tuple[str, str]:
        """A certificate for ``name`` on 127.0.0.1, for TLS servers and clients alike
        (a scheduler's also opens client connections); (cert path, key path)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key = ec.generate_private_key(ec.SECP256R1())
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            _builder(name, self.name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return _write(self.folder, name, cert, key)


def tls_env(ca: CA, role: str, cert: tuple[str, str]) -> dict[str, str]:
    """Dask's TLS settings for a process that holds a certificate for ``role`` only."""
    tls = "DASK_DISTRIBUTED__COMM__TLS__"
    return {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        tls + "CA_FILE": ca.path,
        f"{tls}{role.upper()}__CERT": cert[0],
        f"{tls}{role.upper()}__KEY": cert[1],
    }


# ---- the cluster ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """Scheduler, two workers and a front door over TLS; (scheduler address, front door
    url, the test's own client Security, the CA)."""
    tmp = tmp_path_factory.mktemp("omax-tls")
    ca = CA(tmp / "certs", "omax-test-ca")
    base = {
        **os.environ,
        "DASK_OMAX__STORE__URL": str(tmp / "origin"),
        "DASK_OMAX__WORKER__STORE": str(tmp / "workers" / "{name}"),
    }
    sched, address = start_scheduler(
        {**base, **tls_env(ca, "scheduler", ca.issue("scheduler"))},
        "--protocol",
        "tls",
        "--host",
        "127.0.0.1",
    )
    procs = [sched]
    serve = None
    try:
        assert address.startswith("tls://127.0.0.1:"), address
        for name in ("w1", "w2"):
            env = {**base, **tls_env(ca, "worker", ca.issue(name))}
            procs.append(
                start_worker(address, env, "--no-nanny", "--name", name, "--resources", "GPU=1")
            )
        serve, url, log = start_server(
            tmp, "--scheduler", address, env=tls_env(ca, "client", ca.issue("front-door"))
        )
        me = ca.issue("test-client")
        security = Security(tls_ca_file=ca.path, tls_client_cert=me[0], tls_client_key=me[1])
        with Client(address, security=security, timeout=30) as client:
            _wait_for_slots(client, 2)
        yield address, url, security, ca
    except BaseException:
        print(tail(*procs))
        raise
    finally:
        code = 0 if serve is None else stop_server(serve)
        stop(*reversed(procs))
        assert code == 0, log.read_text()[-4000:]


def _wait_for_slots(client: Client, n: int, timeout: float = 60) -> None:
    """Until ``n`` workers reported their inference slots to the omax plugin."""
    deadline = time.monotonic() + timeout
    while len(client.sync(client.scheduler.omax_cluster)["workers"]) < n:
        assert time.monotonic() < deadline, f"{n} workers' slots not seen in {timeout} s"
        time.sleep(0.2)


def _holders(client: Client, digest: str) -> list[str]:
    state = client.sync(client.scheduler.omax_cluster)
    return [w["address"] for w in state["workers"] if w["replicas"].get(digest, {}).get("complete")]


def test_a_tls_cluster_serves_a_chat_and_replicates_between_workers(tls_cluster):
    address, url, security, _ = tls_cluster
    chat = ollama.Client(host=url, timeout=300).chat(
        model=DEMO,
        messages=[{"role": "user", "content": "Say hi."}],
        options={"num_predict": 4, "temperature": 0},
    )
    assert chat.done and chat.message.role == "assistant" and chat.message.content

    with Client(address, security=security, timeout=30) as client:
        workers = client.sync(client.scheduler.identity, n_workers=-1)["workers"]
        assert len(workers) == 2 and all(w.startswith("tls://") for w in workers)
        digest = next(m.digest for m in ollama.Client(host=url).list().models if m.model == DEMO)
        (source,) = _holders(client, digest)  # the worker that loaded the model
        (target,) = set(workers) - {source}
        # the target streams every blob from its peer over a worker-to-worker TLS comm
        r = client.sync(client.rpc(target).omax_replicate, digest=digest, peers=[source])
        assert r["complete"] and r["fetched_bytes"] > 0, r
        assert set(r["fetched"]) == {source}, r


# A client attempt runs in a child process. In this one, a failed Dask client is
# garbage whose ``__del__`` closes its loop runner, taking ``LoopRunner._lock``; when the
# collector runs it while another client's ``LoopRunner.start`` holds that lock (it
# allocates under it), the thread waits on itself, and every later client in the process
# (the rest of the suite's) hangs on the lock. CI hung there once.
_ATTEMPT = """
import json, sys
from distributed import Client
from distributed.security import Security
address, security = sys.argv[1], json.loads(sys.argv[2])
kwargs = {"security": Security(**security)} if security else {}
Client(address, timeout=5, **kwargs).close()
print("CONNECTED")
"""


def _refused(address: str, security: dict[str, str] | None = None) -> str:
    """How a Dask client connecting to ``address`` was refused within REFUSED_S; fails
    if it connected.

    Dask's client waits for the scheduler's handshake with no deadline of its own,
    and a TLS listener that reads plain bytes can take them for the start of a long
    TLS record and wait for the rest: such an attempt is still unanswered when the
    bound passes. Unanswered is refused too; what must never happen is a handshake.
    """
    cmd = [sys.executable, "-c", _ATTEMPT, address, json.dumps(security or {})]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=REFUSED_S)
    except subprocess.TimeoutExpired:
        return f"no answer within {REFUSED_S:.0f} s"
    assert "CONNECTED" not in proc.stdout, "connected without a valid certificate"
    last = (proc.stderr.strip().splitlines() or ["(nothing)"])[-1]
    return f"after {time.monotonic() - start:.2f} s: {last}"


def test_clients_without_a_cluster_certificate_are_refused(tls_cluster, tmp_path):
    address, _, _, ca = tls_cluster
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    rogue = CA(tmp_path, "rogue-ca")
    rogue_cert = rogue.issue("intruder")
    # Dask's client with no TLS settings at all
    print(f"no certificate: refused {_refused(address)}")
    # one with a certificate the cluster's CA did not sign (it trusts the CA)
    foreign = {
        "tls_ca_file": str(ca.path),
        "tls_client_cert": str(rogue_cert[0]),
        "tls_client_key": str(rogue_cert[1]),
    }
    print(f"foreign certificate: refused {_refused(address, foreign)}")
    # plain TCP to the TLS port
    print(f"plain tcp: refused {_refused(f'tcp://{host}:{port}')}")
    # a TLS socket that trusts the CA but shows no certificate: the scheduler ends it
    with pytest.raises((ssl.SSLError, OSError)):
        _tls_without_certificate(host, int(port), ca.path)


def _tls_without_certificate(host: str, port: int, ca_file: str) -> None:
    """Speak TLS 1.3 to the scheduler with no client certificate and wait for its
    answer; raises when the scheduler refuses the handshake."""
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"\0" * 8)
        if not tls.recv(1):
            raise ConnectionError("closed by the scheduler")


# ---- loopback by default -------------------------------------------------------


def test_the_embedded_cluster_listens_on_loopback_only(tmp_path):
    import dask.config
    import psutil

    from omax.embedded import start_cluster

    me = psutil.Process()
    others = {p.pid for p in me.children(recursive=True)}  # the TLS cluster's, if up

    async def listening() -> list[tuple[str, str]]:
        stores = {"omax.store.url": str(tmp_path / "origin"), "omax.worker.store": str(tmp_path)}
        with dask.config.set(stores):  # the worker gets this process's config at its start
            cluster = await start_cluster(1, ":0")  # as `omax serve --dashboard :0` asks
        try:
            mine = [p for p in me.children(recursive=True) if p.pid not in others]
            return [
                (p.name(), c.laddr.ip)
                for p in (me, *mine)
                for c in p.net_connections("inet")
                if c.status == psutil.CONN_LISTEN
            ]
        finally:
            await cluster.close()

    sockets = asyncio.run(listening())
    assert len(sockets) >= 4, sockets  # scheduler, dashboard, nanny, worker
    assert all(ipaddress.ip_address(ip).is_loopback for _, ip in sockets), sockets


def test_a_scheduler_with_only_its_own_certificate_lends_it_to_its_plugin_client():
    from omax.embedded import on_loopback
    from omax.plugins.security import client_security

    own = Security(tls_ca_file="ca.pem", tls_scheduler_cert="s.pem", tls_scheduler_key="s-key.pem")
    lent = client_security(own)
    assert (lent.tls_client_cert, lent.tls_client_key) == ("s.pem", "s-key.pem")
    assert own.tls_client_cert is None  # the scheduler's own Security is untouched
    both = Security(tls_client_cert="c.pem", tls_scheduler_cert="s.pem")
    assert client_security(both).tls_client_cert == "c.pem"
    assert client_security(Security(require_encryption=False)).tls_client_cert is None
    assert on_loopback(":8787") == "127.0.0.1:8787"
    assert on_loopback("0.0.0.0:8787") == "0.0.0.0:8787"  # exposing it is a choice
