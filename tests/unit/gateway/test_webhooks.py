from __future__ import annotations

import ipaddress

import pytest

from mlapi_gateway.errors import RequestInvalid
from mlapi_gateway.webhooks import check_target, sign, verify


def test_signature_covers_timestamp_and_body() -> None:
    signature = sign("s3cret", 1700000000, b'{"id":"1"}')
    assert signature.startswith("sha256=")
    assert verify("s3cret", 1700000000, b'{"id":"1"}', signature)
    assert not verify("s3cret", 1700000001, b'{"id":"1"}', signature)
    assert not verify("s3cret", 1700000000, b'{"id":"2"}', signature)
    assert not verify("other", 1700000000, b'{"id":"1"}', signature)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://10.0.0.8/x",
        "http://172.16.3.4/x",
        "http://192.168.1.1/x",
        "http://169.254.169.254/x",
        "http://[::1]/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://[fe80::1]/x",
        "http://0.0.0.0/x",
        "http://224.0.0.1/x",
        "ftp://93.184.216.34/x",
        "http://u:p@93.184.216.34/x",
        "/relative",
    ],
)
def test_non_public_targets_are_refused(url: str) -> None:
    with pytest.raises(RequestInvalid) as refused:
        check_target(url, [])
    assert refused.value.errors[0].field == "body.webhook_url"


def test_public_and_allow_listed_targets_pass() -> None:
    check_target("https://93.184.216.34/hook", [])
    allow = [ipaddress.ip_network("127.0.0.1/32")]
    check_target("http://127.0.0.1:9999/hook", allow)
    with pytest.raises(RequestInvalid):
        check_target("http://127.0.0.2:9999/hook", allow)
