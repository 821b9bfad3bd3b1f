"""A throwaway certificate authority for the MLLP TLS tests, made with the openssl command.

The `cryptography` package is not installed here (nor `trustme`); the openssl CLI is, and the
tests that need it skip without it. Keys are P-256, certificates last two days.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def need_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make certificates")


class ThrowawayCa:
    """A CA in `directory` that signs server and client certificates."""

    def __init__(self, directory: Path, name: str = "test-ca") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.name = name
        self.cert = directory / f"{name}.pem"
        self.key = directory / f"{name}.key"
        _openssl(
            "req", "-x509", *_KEY, "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", self.key, "-out", self.cert,
        )  # fmt: skip

    def issue(
        self, common_name: str, *, alt_names: tuple[str, ...] = (), server: bool = False
    ) -> Certificate:
        """A certificate for `common_name`; alt_names as openssl writes them ("DNS:x", "URI:y")."""
        stem = self.directory / f"{self.name}-{common_name}"
        cert, key, request = (stem.with_suffix(s) for s in (".pem", ".key", ".csr"))
        names = list(alt_names)
        if server:
            names += ["IP:127.0.0.1", "DNS:localhost"]
        extensions = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
            "subjectKeyIdentifier=hash",
            "authorityKeyIdentifier=keyid,issuer",
        ]
        if names:
            extensions.append("subjectAltName=" + ",".join(names))
        extfile = stem.with_suffix(".ext")
        extfile.write_text("\n".join(extensions) + "\n")
        _openssl("req", "-new", *_KEY, "-subj", f"/CN={common_name}", "-keyout", key, "-out",
                 request)  # fmt: skip
        _openssl(
            "x509", "-req", "-in", request, "-CA", self.cert, "-CAkey", self.key,
            "-CAcreateserial", "-days", "2", "-extfile", extfile, "-out", cert,
        )  # fmt: skip
        return Certificate(cert, key)
