"""Networks as deployed: an egress proxy (CONNECT), a private CA, TLS failures, for the gateway
and the training client alike (app/outbound.py decides for both).

The W&B host in these tests is `wandb.test`: no resolver knows it, only the test proxy
(tests/fixtures/connect_proxy.py), so a request that reaches it went through the proxy.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trustme

from app.config import ConfigError
from app.training.wandb_api import RemoteUnavailable, WandbTraining
from tests.conftest import TEST_API_KEY, make_settings
from tests.fixtures.connect_proxy import ConnectProxy, TlsTerminator
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import gateway_settings, running_app, sdk_for
from tests.fixtures.hostile_upstream import HostileUpstream

MODEL = "OpenPipe/Qwen3-14B-Instruct"
SECRET = "sk-wandb-secret-" + "k" * 20
PROXY_VARS = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


@pytest.fixture(autouse=True)
def no_ambient_network_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test states its own proxy and trust: none inherited from the machine."""
    for name in (*PROXY_VARS, "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture
async def tls_upstream(ca: trustme.CA) -> AsyncIterator[HostileUpstream]:
    upstream = HostileUpstream(ssl_context=server_context(ca, "wandb.test", "127.0.0.1"))
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    server = ConnectProxy(hosts={"wandb.test": "127.0.0.1"})
    await server.start()
    yield server
    await server.stop()


async def _ask(app: Any, marker: str) -> tuple[str, str]:
    """(non-streamed text, streamed text) of two completions through the gateway."""
    sdk = sdk_for(app)
    try:
        plain = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"plain {marker}"}]
        )
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"chunked_ext {marker}-s"}], stream=True
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    finally:
        await sdk.close()
    return plain.choices[0].message.content or "", streamed


# ------------------------------------------------------------------ TLS
async def test_https_upstream_with_a_private_ca_bundle_streamed_and_not(
    clean_db: str, tls_upstream: HostileUpstream, ca_file: str
) -> None:
    settings = gateway_settings(clean_db, tls_upstream.base_url(), SECRET)
    settings = settings.model_copy(
        update={"outbound": settings.outbound.model_copy(update={"ca_bundle": ca_file})}
    )
    async with running_app(settings) as app:
        assert await _ask(app, "tls") == ("answer for tls", "answer for tls-s")
    assert tls_upstream.seen[0].headers["authorization"] == f"Bearer {SECRET}"


async def test_ssl_cert_file_is_honoured_when_no_bundle_is_configured(
    clean_db: str, tls_upstream: HostileUpstream, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    async with running_app(gateway_settings(clean_db, tls_upstream.base_url(), SECRET)) as app:
        assert await _ask(app, "env") == ("answer for env", "answer for env-s")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_an_untrusted_certificate_is_upstream_tls_error_naming_the_reason(
    clean_db: str, tls_upstream: HostileUpstream, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_app(gateway_settings(clean_db, tls_upstream.base_url(), SECRET)) as app:
        sdk = sdk_for(app)
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "plain x"}], stream=stream
            )
        await sdk.close()
    assert caught.value.status_code == 502
    body: Any = caught.value.body
    assert body["code"] == "upstream_tls_error"
    assert "certificate verify failed" in body["message"]
    assert "self-signed" in body["message"] or "unable to get local issuer" in body["message"]
    assert tls_upstream.seen == []  # nothing was sent over an unverified connection
    assert SECRET not in caplog.text


async def test_a_certificate_for_another_name_is_upstream_tls_error(
    clean_db: str, ca: trustme.CA, ca_file: str
) -> None:
    upstream = HostileUpstream(ssl_context=server_context(ca, "someone-else.test"))
    await upstream.start()
    try:
        settings = gateway_settings(clean_db, upstream.base_url(), SECRET)
        settings = settings.model_copy(
            update={"outbound": settings.outbound.model_copy(update={"ca_bundle": ca_file})}
        )
        async with running_app(settings) as app:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            ) as client:
                response = await client.post(
                    "/v1/chat/completions",
                    json={"model": MODEL, "messages": [{"role": "user", "content": "plain x"}]},
                    headers={"Authorization": f"Bearer {TEST_API_KEY}"},
                )
    finally:
        await upstream.stop()
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (502, "upstream_tls_error")
    assert "mismatch" in error["message"]


def test_an_unreadable_ca_bundle_refuses_to_start_in_one_line(db_url: str, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-ca.pem"
    bogus.write_text("hello")
    for path in (str(bogus), str(tmp_path / "missing.pem")):
        with pytest.raises(ConfigError) as caught:
            make_settings(db_url, outbound={"ca_bundle": path})
        message = str(caught.value)
        assert message.startswith("invalid configuration: OUTBOUND__CA_BUNDLE: cannot load CA certificates")
        assert "\n" not in message


# ------------------------------------------------------------------ the proxy
async def test_the_gateway_reaches_a_host_only_the_proxy_knows_through_a_connect_tunnel(
    clean_db: str,
    tls_upstream: HostileUpstream,
    proxy: ConnectProxy,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,.internal.example")
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    base_url = tls_upstream.base_url("wandb.test")
    async with running_app(gateway_settings(clean_db, base_url, SECRET)) as app:
        assert await _ask(app, "via-proxy") == ("answer for via-proxy", "answer for via-proxy-s")
    assert set(proxy.tunnels) == {f"wandb.test:{tls_upstream.port}"}
    assert proxy.seen  # the proxy carried the traffic ...
    assert SECRET.encode() not in proxy.seen  # ... and never saw the key: TLS ran end to end
    assert b"via-proxy" not in proxy.seen
    assert SECRET not in caplog.text


async def test_no_proxy_sends_the_upstream_direct(
    clean_db: str,
    tls_upstream: HostileUpstream,
    proxy: ConnectProxy,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("https_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "127.0.0.0/8")
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    async with running_app(gateway_settings(clean_db, tls_upstream.base_url(), SECRET)) as app:
        assert await _ask(app, "direct") == ("answer for direct", "answer for direct-s")
    assert proxy.tunnels == []
    assert not proxy.seen


async def test_a_proxy_refusing_the_tunnel_is_upstream_proxy_error_without_its_password(
    clean_db: str,
    tls_upstream: HostileUpstream,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = ConnectProxy(hosts={"wandb.test": "127.0.0.1"}, credentials=("egress", "pr0xy-pass"))
    await proxy.start()
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    base_url = tls_upstream.base_url("wandb.test")
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://egress:wrong-pass@"))
        async with running_app(gateway_settings(clean_db, base_url, SECRET)) as app:
            sdk = sdk_for(app)
            with pytest.raises(openai.APIStatusError) as caught:
                await sdk.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "plain p"}]
                )
            await sdk.close()
        body: Any = caught.value.body
        assert (caught.value.status_code, body["code"]) == (502, "upstream_proxy_error")
        assert "407" in body["message"]
        assert "wrong-pass" not in body["message"]
        assert "wrong-pass" not in caplog.text

        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://egress:pr0xy-pass@"))
        async with running_app(gateway_settings(clean_db, base_url, SECRET)) as app:
            assert await _ask(app, "auth") == ("answer for auth", "answer for auth-s")
        assert "pr0xy-pass" not in caplog.text
    finally:
        await proxy.stop()


async def test_an_unreachable_proxy_is_upstream_proxy_error(
    clean_db: str, tls_upstream: HostileUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    async with running_app(gateway_settings(clean_db, tls_upstream.base_url("wandb.test"), SECRET)) as app:
        sdk = sdk_for(app)
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "plain p"}])
        await sdk.close()
    body: Any = caught.value.body
    assert (caught.value.status_code, body["code"]) == (502, "upstream_proxy_error")
    assert "http://127.0.0.1:9" in body["message"]


# ------------------------------------------------------------------ the training client
@pytest.fixture
async def tls_emulator(emulator: EmulatorHandle, ca: trustme.CA) -> AsyncIterator[TlsTerminator]:
    """The emulator behind HTTPS (certificate for wandb.test, signed by the test CA)."""
    root = httpx.URL(emulator.base_url)
    terminator = TlsTerminator(server_context(ca, "wandb.test"), root.host, root.port or 80)
    await terminator.start()
    yield terminator
    await terminator.stop()


async def test_the_training_client_goes_through_the_same_proxy_with_the_same_ca(
    emulator: EmulatorHandle,
    tls_emulator: TlsTerminator,
    proxy: ConnectProxy,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    settings = make_settings(
        "sqlite+aiosqlite:///:memory:",
        wandb_base_url=f"https://wandb.test:{tls_emulator.port}/v1",
        wandb_api_key=emulator.api_key,
        outbound={"ca_bundle": ca_file},
    )
    trainer = WandbTraining.from_settings(settings)
    try:
        model = await trainer.register(
            name="proxied-agent", project="babylon-rl", entity=None, base_model=MODEL
        )
        assert await trainer.latest_step(model.id) == 0
    finally:
        await trainer.close()
    assert set(proxy.tunnels) == {f"wandb.test:{tls_emulator.port}"}
    assert emulator.api_key.encode() not in proxy.seen
    assert [m["name"] for m in emulator.models()] == ["proxied-agent"]


async def test_the_training_client_refuses_an_untrusted_certificate_like_the_gateway(
    emulator: EmulatorHandle,
    tls_emulator: TlsTerminator,
    proxy: ConnectProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    settings = make_settings(
        "sqlite+aiosqlite:///:memory:",
        wandb_base_url=f"https://wandb.test:{tls_emulator.port}/v1",
        wandb_api_key=emulator.api_key,
    )
    trainer = WandbTraining.from_settings(settings)
    try:
        with pytest.raises(RemoteUnavailable):
            await trainer.register(name="agent", project="babylon-rl", entity=None, base_model=MODEL)
    finally:
        await trainer.close()
    assert emulator.models() == []
    assert proxy.tunnels  # it did go through the proxy, and refused the certificate there
