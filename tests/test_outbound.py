"""app/outbound.py: which proxy a W&B URL goes through, and which CAs are trusted (pure logic)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from app.outbound import Outbound, OutboundSettings, ProxyConfigError, bypasses_proxy, proxy_for, ssl_context

WANDB = "https://api.training.wandb.ai/v1"


def test_https_targets_use_https_proxy_and_http_targets_http_proxy() -> None:
    env = {"HTTPS_PROXY": "http://secure:3128", "HTTP_PROXY": "http://plain:8080"}
    secure, plain = proxy_for(WANDB, env), proxy_for("http://emulator:8000/v1", env)
    assert secure is not None
    assert secure.url == "http://secure:3128"
    assert plain is not None
    assert plain.url == "http://plain:8080"


def test_all_proxy_is_the_fallback_and_lower_case_wins() -> None:
    proxy = proxy_for(WANDB, {"ALL_PROXY": "http://all:1"})
    assert proxy is not None
    assert proxy.url == "http://all:1"
    proxy = proxy_for(WANDB, {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"})
    assert proxy is not None
    assert (proxy.url, proxy.source) == ("http://lower:2", "https_proxy")


def test_no_proxy_variable_means_a_direct_connection() -> None:
    assert proxy_for(WANDB, {}) is None
    assert proxy_for(WANDB, {"HTTP_PROXY": "http://plain:8080"}) is None  # only for http:// targets


def test_upper_case_http_proxy_is_ignored_under_cgi() -> None:
    env = {"HTTP_PROXY": "http://from-a-request-header:1", "REQUEST_METHOD": "GET"}
    assert proxy_for("http://emulator:8000/v1", env) is None


def test_a_bare_host_port_is_an_http_proxy_and_credentials_are_kept_apart() -> None:
    proxy = proxy_for(WANDB, {"HTTPS_PROXY": "user%40corp:p%3Ass@proxy.corp:3128"})
    assert proxy is not None
    assert (proxy.url, proxy.username, proxy.password) == ("http://proxy.corp:3128", "user@corp", "p:ss")
    assert proxy.url_with_credentials == "http://user%40corp:p%3Ass@proxy.corp:3128"
    assert "p:ss" not in repr(proxy)


@pytest.mark.parametrize(
    "value", ["socks5://proxy:1080", "ftp://proxy:21", "http://:3128", "http://proxy:port"]
)
def test_an_unusable_proxy_url_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ProxyConfigError) as caught:
        proxy_for(WANDB, {"HTTPS_PROXY": value})
    assert str(caught.value).startswith("HTTPS_PROXY: ")


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypassed"),
    [
        ("api.training.wandb.ai", 443, "*", True),
        ("api.training.wandb.ai", 443, "wandb.ai", True),
        ("api.training.wandb.ai", 443, ".wandb.ai", True),
        ("api.training.wandb.ai", 443, "*.wandb.ai", True),
        ("wandb.ai", 443, ".wandb.ai", True),
        ("notwandb.ai", 443, "wandb.ai", False),
        ("api.training.wandb.ai", 443, "example.com, wandb.ai", True),
        ("api.training.wandb.ai", 443, "wandb.ai:8443", False),
        ("api.training.wandb.ai", 8443, "wandb.ai:8443", True),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("11.1.2.3", 443, "10.0.0.0/8", False),
        ("127.0.0.1", 443, "127.0.0.1", True),
        ("::1", 443, "::1", True),
        ("[::1]", 443, "[::1]", True),
        ("wandb.test", 443, "10.0.0.0/8,localhost", False),
        ("API.Training.WANDB.ai", 443, "wandb.AI", True),
    ],
)
def test_no_proxy_rules(host: str, port: int, no_proxy: str, bypassed: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypassed


def test_no_proxy_applies_to_the_target_url() -> None:
    env = {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ".wandb.ai"}
    assert proxy_for(WANDB, env) is None
    assert proxy_for("https://wandb.test/v1", env) is not None


def test_the_ca_bundle_replaces_the_default_trust(tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    context = ssl_context(OutboundSettings(ca_bundle=str(pem)), environ={"SSL_CERT_FILE": "/nonexistent"})
    assert len(context.get_ca_certs()) == 1
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_ssl_cert_file_is_used_without_a_bundle_and_certifi_otherwise(tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    assert len(ssl_context(OutboundSettings(), environ={"SSL_CERT_FILE": str(pem)}).get_ca_certs()) == 1
    assert len(ssl_context(OutboundSettings(), environ={}).get_ca_certs()) > 50  # certifi's bundle


def test_describe_names_the_route_without_credentials() -> None:
    route = Outbound.for_url(WANDB, OutboundSettings(), {"HTTPS_PROXY": "http://u:secret@proxy:3128"})
    assert route.describe() == "via http://proxy:3128 (HTTPS_PROXY)"
    assert Outbound.for_url(WANDB, OutboundSettings(), {}).describe() == "direct"


def test_an_unusable_proxy_variable_refuses_to_start_in_one_line(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.config import ConfigError
    from tests.conftest import make_settings

    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy:1080")
    with pytest.raises(ConfigError) as caught:
        make_settings(db_url)
    assert str(caught.value) == (
        "invalid configuration: OUTBOUND: HTTPS_PROXY: unsupported proxy scheme 'socks5'; "
        "use http://host:port or https://host:port"
    )


def test_other_proxy_variables_are_not_ours_to_judge() -> None:
    env = {"FTP_PROXY": "ftp://proxy:21", "SOCKS_PROXY": "socks5://proxy:1080", "HTTPS_PROXY": "http://p:1"}
    proxy = proxy_for(WANDB, env)
    assert proxy is not None
    assert proxy.url == "http://p:1"
