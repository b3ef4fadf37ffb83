"""Request and response signing (SPEC §11, HC-24)."""
from __future__ import annotations

import pytest

from syncd.errors import SyncdError
from syncd.proto import signing

NOW = 1_767_225_600
BODY = b"\x84\xa1a\xcc\xfa\xa1e\x03\xa1l\xcd\x01\xf4\xa1w\xcd\xea\x60"


def ring(*keys: tuple[str, str, str]) -> signing.Keyring:
    r = signing.Keyring()
    for peer, kid, secret in keys:
        r.add(peer, kid, secret)
    return r


CHILD = ring(("430100", "k1", "furong-changsha-secret-1"))
PARENT = ring(("430102", "k1", "furong-changsha-secret-1"))


def signed(path: str = "/v1/pull?wait=1", body: bytes = BODY, now: int = NOW) -> dict[str, str]:
    return signing.sign_request(CHILD.signing_key("430100"), "POST", path, body, now)


def test_r11_1_valid_request_returns_peer_and_nonce() -> None:
    h = signed()
    v = signing.verify_request(PARENT, "POST", "/v1/pull?wait=1", h, BODY, NOW)
    assert (v.peer, v.key_id, v.nonce) == ("430102", "k1", h[signing.H_NONCE])
    assert len(v.nonce) == 32 and int(v.nonce, 16) >= 0


def test_r11_1_nonces_are_fresh_each_time() -> None:
    assert signed()[signing.H_NONCE] != signed()[signing.H_NONCE]


@pytest.mark.parametrize("change", ["method", "path", "query", "body", "time", "nonce"])
def test_r11_1_any_signed_part_changed_is_bad_signature(change: str) -> None:
    h = signed()
    method, path, body = "POST", "/v1/pull?wait=1", BODY
    if change == "method":
        method = "PUT"
    elif change == "path":
        path = "/syncd/v1/pull?wait=1"
    elif change == "query":
        path = "/v1/pull?wait=2"
    elif change == "body":
        body = BODY + b"\x00"
    elif change == "time":
        h = {**h, signing.H_TIME: str(NOW + 1)}
    else:
        h = {**h, signing.H_NONCE: "0" * 32}
    with pytest.raises(SyncdError) as info:
        signing.verify_request(PARENT, method, path, h, body, NOW)
    assert info.value.code == "BAD_SIGNATURE"


def test_r11_3_headers_are_case_insensitive() -> None:
    h = {k.lower(): v for k, v in signed().items()}
    assert signing.verify_request(PARENT, "POST", "/v1/pull?wait=1", h, BODY, NOW).peer == "430102"


def test_r11_3_missing_header_unknown_key_stale_time() -> None:
    h = signed()
    for name, code in [(signing.H_SIGNATURE, "MISSING_SIGNATURE"), (signing.H_KEY, "MISSING_SIGNATURE")]:
        with pytest.raises(SyncdError) as info:
            signing.verify_request(PARENT, "POST", "/v1/pull?wait=1",
                                   {k: v for k, v in h.items() if k != name}, BODY, NOW)
        assert info.value.code == code
    with pytest.raises(SyncdError) as info:
        signing.verify_request(PARENT, "POST", "/v1/pull?wait=1", {**h, signing.H_KEY: "k9"}, BODY, NOW)
    assert info.value.code == "UNKNOWN_KEY"
    for now in (NOW + 301, NOW - 301):
        with pytest.raises(SyncdError) as info:
            signing.verify_request(PARENT, "POST", "/v1/pull?wait=1", h, BODY, now)
        assert info.value.code == "STALE_TIMESTAMP"
    assert signing.verify_request(PARENT, "POST", "/v1/pull?wait=1", h, BODY, NOW + 300)
    with pytest.raises(SyncdError) as info:
        signing.verify_request(PARENT, "POST", "/v1/pull?wait=1", h, BODY, NOW + 20, window=10)
    assert info.value.code == "STALE_TIMESTAMP"


def test_hc24_forged_response_rejected() -> None:
    """A response signed with another secret, replayed from another request, altered,
    or unsigned is FORGED_RESPONSE; the genuine one passes."""
    nonce = signed()[signing.H_NONCE]
    body = b"\x85\xa2ch\x90\xa2lp\xcc\xfa\xa2hd\xcc\xfa\xa1e\x03\xa1m\xc2"
    key = PARENT.signing_key("430102")
    good = signing.sign_response(key, nonce, 200, body, NOW)
    signing.verify_response(CHILD, "430100", nonce, 200, good, body, NOW)
    forger = signing.Key("k1", b"dns-hijacker-guess-0000")
    cases = [
        (signing.sign_response(forger, nonce, 200, body, NOW), 200, body),
        (signing.sign_response(key, "f" * 32, 200, body, NOW), 200, body),  # another request's reply
        (good, 200, body[:-1] + b"\xc3"),  # altered body
        (good, 500, body),  # altered status
        ({}, 200, body),  # unsigned
        ({**good, signing.H_KEY: "k2"}, 200, body),  # not a key of this peer
        (signing.sign_response(key, nonce, 200, body, NOW - 3600), 200, body),  # old
    ]
    for headers, status, b in cases:
        with pytest.raises(SyncdError) as info:
            signing.verify_response(CHILD, "430100", nonce, status, headers, b, NOW)
        assert info.value.code == "FORGED_RESPONSE"
        assert info.value.retryable


def test_r11_5_rotation_with_two_live_keys_no_request_fails() -> None:
    old, new = "furong-changsha-secret-1", "furong-changsha-secret-2"
    parent = ring(("430102", "k1", old))
    child = ring(("430100", "k1", old))
    steps = []
    parent.add("430102", "k2", new)  # step 1: parent accepts both
    steps.append(child)
    child = ring(("430100", "k2", new), ("430100", "k1", old))  # step 2: child signs with the new key
    steps.append(child)
    parent = ring(("430102", "k2", new))  # step 3: old key removed
    for c in steps[1:] + [child]:
        h = signing.sign_request(c.signing_key("430100"), "POST", "/v1/push", BODY, NOW)
        assert signing.verify_request(parent, "POST", "/v1/push", h, BODY, NOW).key_id == "k2"
    # during step 1 the child still signs with k1 and the parent accepts it
    p1 = ring(("430102", "k1", old), ("430102", "k2", new))
    h = signing.sign_request(steps[0].signing_key("430100"), "POST", "/v1/push", BODY, NOW)
    v = signing.verify_request(p1, "POST", "/v1/push", h, BODY, NOW)
    assert v.key_id == "k1"
    # and the parent's reply, signed with the verifying key, passes at the child
    rh = signing.sign_response(p1.lookup(v.key_id)[1], v.nonce, 200, b"", NOW)
    signing.verify_response(steps[0], "430100", v.nonce, 200, rh, b"", NOW)
    # the removed key no longer verifies
    with pytest.raises(SyncdError) as info:
        signing.verify_request(parent, "POST", "/v1/push", h, BODY, NOW)
    assert info.value.code == "UNKNOWN_KEY"


def test_keyring_refuses_a_third_key_and_short_secrets() -> None:
    r = ring(("430102", "k1", "a" * 16), ("430102", "k2", "b" * 16))
    with pytest.raises(ValueError):
        r.add("430102", "k3", "c" * 16)
    with pytest.raises(ValueError):
        r.add("430103", "k4", "short")
    with pytest.raises(ValueError):
        r.add("430103", "k1", "d" * 16)


def test_r11_2_request_and_response_strings_cannot_collide() -> None:
    with pytest.raises(ValueError):
        signing.request_string("POST", "/v1/pull\n200", NOW, "a" * 32, b"")
    req = signing.request_string("POST", "/v1/pull", NOW, "a" * 32, b"")
    resp = signing.response_string("a" * 32, 200, NOW, b"")
    assert req.count(b"\n") == 4 and resp.count(b"\n") == 3
