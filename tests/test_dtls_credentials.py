"""DTLS credentials (issue 14): aiocoap's JSON format, longest pattern wins, accepted server identities."""

from __future__ import annotations

import json
import pathlib

import pytest

from coapio.protocol.dtls import CredentialsError, DtlsCredentials, Psk

FILE = {
    "coaps://device.example/*": {"dtls": {"psk": {"ascii": "general"}, "client-identity": {"ascii": "me"}}},
    "coaps://device.example/special/*": ":client1",
    "coaps://*": {"dtls": {"psk": {"hex": "0102"}, "client-identity": {"ascii": "any"}}},
    ":client1": {"dtls": {"psk": {"hex": "73 65-63"}, "client-identity": {"ascii": "client1"}}},
    "coap://oscore.example/*": {"oscore": {"contextfile": "somewhere/"}},
    ":unprotected": {"unprotected": True},
}


def test_client_lookup_takes_the_longest_matching_pattern() -> None:
    creds = DtlsCredentials.from_dict(FILE)
    assert creds.client_psk("device.example", 5684) == Psk(b"me", b"general")
    assert creds.client_psk("device.example", 5700) == Psk(b"any", b"\x01\x02")
    assert creds.client_psk("other.example", 5684) == Psk(b"any", b"\x01\x02")
    assert creds.client_psk("::1", 5684) == Psk(b"any", b"\x01\x02")


def test_a_server_accepts_every_listed_identity() -> None:
    creds = DtlsCredentials.from_dict(FILE)
    assert creds.server_psk(b"client1") == b"sec"
    assert creds.server_psk(b"me") == b"general"
    assert creds.server_psk(b"nobody") is None
    assert creds.has_psk and not creds.has_certificate


def test_load_reads_a_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps(FILE))
    assert DtlsCredentials.load(str(path)).server_psk(b"any") == b"\x01\x02"


@pytest.mark.parametrize("data", [
    [],
    {"coaps://x/*": {"dtls": {"psk": "plain", "client-identity": {"ascii": "a"}}}},
    {"coaps://x/*": {"dtls": {"psk": {"hex": "zz"}, "client-identity": {"ascii": "a"}}}},
    {"coaps://x/*": {"dtls": {"psk": {"ascii": "k"}}}},
    {"coaps://x/*": {"dtls": {"psk": {"ascii": "k"}, "client-identity": {"ascii": "a"}, "rpk": 1}}},
    {"coaps://x/*": ":missing"},
    {":a": ":b", ":b": ":a"},
    {":a": {"dtls": {"psk": {"ascii": "k1"}, "client-identity": {"ascii": "a"}}},
     ":b": {"dtls": {"psk": {"ascii": "k2"}, "client-identity": {"ascii": "a"}}}},
    {"coaps://x/*": {"dtls": {"psk": {"ascii": ""}, "client-identity": {"ascii": "a"}}}},
])
def test_bad_entries_are_refused_with_a_reason(data: object) -> None:
    with pytest.raises(CredentialsError):
        DtlsCredentials.from_dict(data)


def test_files_must_exist_and_a_key_needs_a_certificate(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CredentialsError, match="no such file"):
        DtlsCredentials(cert=str(tmp_path / "missing.pem"))
    with pytest.raises(CredentialsError, match="without a certificate"):
        DtlsCredentials(key=str(tmp_path / "key.pem"))


def test_the_key_is_never_shown() -> None:
    assert "general" not in repr(Psk(b"me", b"general"))


def test_client_psk_entries_are_accepted_by_the_server_too_as_documented() -> None:
    """docs/dtls.rst warns about this (aiocoap's behaviour): an entry saying which PSK to present to a
    server also lets that identity and key in as a client."""
    creds = DtlsCredentials.from_dict({
        "coaps://cloud.example/*": {"dtls": {"psk": {"ascii": "cloud-shared-key"},
                                             "client-identity": {"ascii": "gateway-7"}}},
    })
    assert creds.server_psk(b"gateway-7") == b"cloud-shared-key" and creds.has_psk
    assert DtlsCredentials(psk={"coaps://*": Psk(b"me", b"k")}).server_psk(b"me") == b"k"
    docs = pathlib.Path(__file__).parent.parent / "docs" / "dtls.rst"
    assert "accepted by the server too" in docs.read_text()
