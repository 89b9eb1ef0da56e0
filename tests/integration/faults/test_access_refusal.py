"""Triton's refusal of a missing or wrong access key reaches callers as AccessDeniedError,
naming where the key is looked up, over both protocols, without retries."""

from __future__ import annotations

import numpy as np
import pytest

from mlapi_client import Client, RetryPolicy, access
from mlapi_client.errors import AccessDeniedError

PIXELS = {"pixels": np.zeros((1, 64), dtype=np.float32)}
PROMPT = {"text_input": np.array([b"hi"], dtype=object)}


@pytest.mark.parametrize("key", ["wrong-key", ""], ids=["wrong", "missing"])  # "": none sent
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_missing_or_wrong_key_is_access_denied_not_unavailable(triton, protocol, key):
    url = f"http://{triton.http_url}" if protocol == "http" else f"grpc://{triton.grpc_url}"
    # A retryable error would be retried under this policy; call_with_retry raises a
    # non-retryable one at its first attempt (tests/unit/client), so retryable=False is the proof.
    patient = RetryPolicy(max_attempts=5, initial_backoff_s=1.0, deadline_s=30)
    with Client(url, triton_key=key, retry=patient) as client:
        with pytest.raises(AccessDeniedError) as refused:
            client.infer("digits_classifier", PIXELS, 1)
        assert refused.value.retryable is False
        assert "access key is missing or wrong" in str(refused.value)
        assert access.KEY_FILE_ENV in str(refused.value)
        with pytest.raises(AccessDeniedError):
            list(client.stream("text_generator", PROMPT))
        assert client.is_live()  # health stays open
