"""Webhook signatures, the address rules of the SSRF filter, and webhook URL syntax."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from pydantic import ValidationError

from mlapi_gateway.errors import RequestInvalidError
from mlapi_gateway.settings import GatewaySettings
from mlapi_gateway.webhooks import check_target, is_allowed, is_public, parse_target, sign, verify


def test_signature_covers_timestamp_and_body() -> None:
    signature = sign("s3cret", 1700000000, b'{"id":"1"}')
    assert signature.startswith("sha256=")
    assert verify("s3cret", 1700000000, b'{"id":"1"}', signature)
    assert not verify("s3cret", 1700000001, b'{"id":"1"}', signature)
    assert not verify("s3cret", 1700000000, b'{"id":"2"}', signature)
    assert not verify("other", 1700000000, b'{"id":"1"}', signature)


@pytest.mark.parametrize(
    "address",
    [
        "100.100.100.200",  # cloud metadata inside 100.64.0.0/10 (is_private says no)
        "100.64.0.1",
        "169.254.169.254",
        "127.0.0.1",
        "10.0.0.8",
        "172.16.3.4",
        "192.168.1.1",
        "198.18.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "240.0.0.1",
        "224.0.0.1",
        "233.252.0.1",  # multicast that is_global accepts
        "192.88.99.1",  # 6to4 relay anycast
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002::1",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "fec0::1",  # site-local, which is_global accepts on Python 3.11
        "fe80::1",
        "fc00::1",
        "ff0e::1",
        "2001:db8::1",
        "2001::1",  # Teredo
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    parsed = ipaddress.ip_address(address)
    assert not is_public(parsed)
    assert not is_allowed(parsed, [])


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "192.0.0.9"]
)
def test_public_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_the_allow_list_admits_named_networks_only() -> None:
    allow = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.2.0.0/16")]
    for address in ("127.0.0.1", "::ffff:127.0.0.1", "10.2.3.4"):
        assert is_allowed(ipaddress.ip_address(address), allow), address
    for address in ("127.0.0.2", "10.3.0.1", "169.254.169.254", "100.100.100.200"):
        assert not is_allowed(ipaddress.ip_address(address), allow), address


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/relative",
        "http://",
        "http:///x",
        "http://:80/x",
        "ftp://example.org/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://exa mple.org/x",
        " http://example.org/x",
        "http://example.org/x\n",
        "http://example.org/\x00",
        "http://example.org:99999/x",
        "http://example.org:0/x",
        "http://example.org:abc/x",
        "http://example.org:-1/x",
        "http://[::1",
        "http://[zz::]/x",
        "http://[::1%eth0]/x",
        "http://[fe80::1%25eth0]/x",
        "http://u:p@example.org/x",
        "http://u@example.org/x",
        "http://evil.example\\@example.org/x",
        "http://127.1/x",
        "http://0x7f.1/x",
        "http://2130706433/x",
        "http://-a-.example.org/x",
        "http://xn--/x",
        "http://" + "a" * 64 + ".org/x",
        "http://%31%32%37.0.0.1/x",
    ],
)
def test_malformed_urls_are_refused_naming_the_field(url: str) -> None:
    with pytest.raises(RequestInvalidError) as refused:
        parse_target(url)
    assert [e.field for e in refused.value.errors] == ["body.webhook_url"]
    assert refused.value.errors[0].message


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("https://example.org/hook", "example.org", 443),
        ("HTTP://Example.ORG:8080/hook?x=1", "example.org", 8080),
        ("http://[2606:4700::1111]:8443/x", "2606:4700::1111", 8443),
        ("http://93.184.216.34/x", "93.184.216.34", 80),
        ("https://münchen.de/x", "münchen.de", 443),
        ("https://hooks.example.org./x", "hooks.example.org.", 443),
    ],
)
def test_wellformed_urls_parse(url: str, host: str, port: int) -> None:
    target = parse_target(url)
    assert (target.host, target.port) == (host, port)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://100.100.100.200/latest/meta-data",
        "http://169.254.169.254/x",
        "http://[2002::1]/x",
        "http://[fec0::1]/x",
        "http://localhost:9/x",  # resolved: 127.0.0.1 and ::1
    ],
)
def test_check_target_refuses_where_the_url_points(url: str) -> None:
    with pytest.raises(RequestInvalidError) as refused:
        asyncio.run(check_target(url, []))
    assert refused.value.errors[0].field == "body.webhook_url"
    assert "not a public address" in refused.value.errors[0].message


def test_check_target_accepts_public_and_allow_listed_targets() -> None:
    asyncio.run(check_target("https://93.184.216.34/hook", []))
    allow = [ipaddress.ip_network("127.0.0.1/32")]
    assert asyncio.run(check_target("http://127.0.0.1:9999/hook", allow)).port == 9999
    with pytest.raises(RequestInvalidError):
        asyncio.run(check_target("http://127.0.0.2:9999/hook", allow))


def test_there_is_no_default_webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLAPI_GATEWAY_WEBHOOK_SECRET", raising=False)
    assert GatewaySettings().webhook_secret is None
    monkeypatch.setenv("MLAPI_GATEWAY_WEBHOOK_SECRET", "change-me")
    with pytest.raises(ValidationError, match="webhook_secret"):
        GatewaySettings()
    monkeypatch.setenv("MLAPI_GATEWAY_WEBHOOK_SECRET", "a-long-enough-secret")
    assert GatewaySettings().webhook_secret == "a-long-enough-secret"
    monkeypatch.setenv("MLAPI_GATEWAY_WEBHOOK_SECRET", "")
    assert GatewaySettings().webhook_secret is None
