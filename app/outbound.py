"""Outbound HTTP as deployed: the egress proxy and the trusted CAs, one rule for every client.

The gateway (aiohttp, app/gateway/upstream.py) and the training client (httpx inside
openpipe-art's ServerlessBackend, app/training/wandb_api.py) both reach W&B. Each library has
its own reading of the proxy variables (aiohttp follows `urllib`, httpx has its own NO_PROXY
patterns) and its own trust store (aiohttp the system's, httpx certifi's), so both are
given what is decided here instead, explicitly, and neither reads the environment itself.

Proxy (read from the environment when a client is built, like curl, urllib and httpx do):
- `https_proxy`/`HTTPS_PROXY` for https:// targets, `http_proxy`/`HTTP_PROXY` for http://,
  `all_proxy`/`ALL_PROXY` for either; the lower-case name wins (urllib's and curl's rule), and
  the upper-case `HTTP_PROXY` is ignored under CGI (`REQUEST_METHOD` set, "httpoxy").
- The proxy URL is `http://[user:password@]host:port` (a bare `host:port` means http://) or
  `https://…`; an https:// target goes through a CONNECT tunnel, so TLS runs end to end and the
  proxy never sees the request, its `Authorization` header or the answer.
- `no_proxy`/`NO_PROXY`: comma-separated; `*` bypasses the proxy for everything; an entry
  matches the host itself and its subdomains (`example.com`, `.example.com` and `*.example.com`
  all match `api.example.com` and `example.com`); an IP address or CIDR network (`10.0.0.0/8`,
  `::1`) matches literal IP hosts in it; `host:port` only matches that port.

Trust (`OUTBOUND__CA_BUNDLE`, then `SSL_CERT_FILE`/`SSL_CERT_DIR`, then certifi's bundle, which
is what httpx and the openai SDK trust by default, so training behaves as before):
a CA bundle replaces the default trust store, it does not add to it (a private CA or a
TLS-inspecting egress proxy is then the only trusted issuer).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator

PROXY_SCHEMES = ("http", "https")


class OutboundSettings(BaseModel):
    """Outbound HTTP of every client that calls W&B (env: OUTBOUND__*)."""

    ca_bundle: str | None = Field(
        None,
        description="PEM file (or c_rehash'ed directory) of the CAs trusted for W&B and the proxy; "
        "replaces the default trust store (default: SSL_CERT_FILE/SSL_CERT_DIR, else certifi's bundle)",
    )

    @field_validator("ca_bundle")
    @classmethod
    def _loadable(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            _context_from(value)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ValueError(f"cannot load CA certificates from {value!r}: {_reason(exc)}") from None
        return value

    @model_validator(mode="after")
    def _proxies_usable(self) -> OutboundSettings:
        # A proxy variable no client can use is refused at start, in one line, rather than
        # on the first request.
        for value, name in _proxy_env(os.environ).values():
            try:
                _parse_proxy(value, name)
            except ProxyConfigError as exc:
                raise ValueError(str(exc)) from None
        return self


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(getattr(exc, "reason", None) or exc)


def _context_from(path: str) -> ssl.SSLContext:
    if Path(path).is_dir():
        return ssl.create_default_context(capath=path)
    if not Path(path).is_file():
        raise FileNotFoundError(2, "no such file or directory")
    return ssl.create_default_context(cafile=path)


def ssl_context(settings: OutboundSettings, environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """The verifying TLS context of every outbound client (hostname checks on, TLS ≥ 1.2)."""
    env = os.environ if environ is None else environ
    if settings.ca_bundle:
        return _context_from(settings.ca_bundle)
    cafile, capath = env.get("SSL_CERT_FILE") or None, env.get("SSL_CERT_DIR") or None
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx depends on certifi
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


@dataclass(frozen=True, slots=True)
class Proxy:
    """The proxy a target URL goes through."""

    url: str  # scheme://host:port, without credentials
    username: str | None = None
    password: str | None = None
    source: str = ""  # the variable it came from, for logs

    @property
    def url_with_credentials(self) -> str:
        """For clients that take credentials in the URL only (httpx)."""
        if self.username is None:
            return self.url
        parts = urlsplit(self.url)
        auth = quote(self.username, safe="") + ":" + quote(self.password or "", safe="")
        return f"{parts.scheme}://{auth}@{parts.netloc}"

    def __repr__(self) -> str:  # never the password
        return f"Proxy({self.url!r}, user={self.username!r}, from={self.source})"


class ProxyConfigError(ValueError):
    """A proxy variable is set to something no client here can use."""


def _proxy_env(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """scheme → (value, variable name), with urllib's precedence (lower case wins; CGI rule)."""
    found: dict[str, tuple[str, str]] = {}
    for name, value in environ.items():
        lower = name.lower()
        if value and lower in ("http_proxy", "https_proxy", "all_proxy"):
            scheme = lower[: -len("_proxy")]
            if name == "HTTP_PROXY" and "REQUEST_METHOD" in environ:
                continue  # httpoxy: under CGI this variable comes from a request header
            if name == lower or scheme not in found:
                found[scheme] = (value, name)
    return found


def _parse_proxy(value: str, source: str) -> Proxy:
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme.lower() not in PROXY_SCHEMES:
        raise ProxyConfigError(
            f"{source}: unsupported proxy scheme {parts.scheme!r}; use http://host:port or https://host:port"
        )
    if not parts.hostname:
        raise ProxyConfigError(f"{source}: the proxy URL has no host")
    try:
        port = parts.port
    except ValueError:
        raise ProxyConfigError(f"{source}: the proxy URL has an invalid port") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    return Proxy(
        url=f"{parts.scheme.lower()}://{host}:{port}",
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        source=source,
    )


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether `host:port` is exempt from the proxy under `no_proxy` (rules in the module docstring)."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_port: int | None = None
        network = _network(entry)
        if network is None:
            name, sep, port_text = entry.rpartition(":")
            if sep and port_text.isdigit() and "]" not in port_text:
                entry, entry_port = name, int(port_text)
                network = _network(entry)
        if entry_port is not None and entry_port != port:
            continue
        if network is not None:
            if address is not None and address.version == network.version and address in network:
                return True
            continue
        domain = entry.removeprefix("*").lstrip(".").rstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy `url` must go through according to the environment, or None for a direct connection.

    Raises ProxyConfigError when the applicable variable cannot be used."""
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    proxies = _proxy_env(env)
    chosen = proxies.get(scheme) or proxies.get("all")
    if chosen is None:
        return None
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    if no_proxy and bypasses_proxy(host, port, no_proxy):
        return None
    return _parse_proxy(*chosen)


@dataclass(frozen=True, slots=True)
class Outbound:
    """How to reach one origin: through which proxy, trusting which CAs."""

    url: str
    proxy: Proxy | None
    ssl: ssl.SSLContext

    @classmethod
    def for_url(
        cls, url: str, settings: OutboundSettings, environ: Mapping[str, str] | None = None
    ) -> Outbound:
        return cls(url=url, proxy=proxy_for(url, environ), ssl=ssl_context(settings, environ))

    def describe(self) -> str:
        """For logs: the route, never credentials."""
        if self.proxy is None:
            return "direct"
        return f"via {self.proxy.url} ({self.proxy.source})"
