"""Certificates made for one run (openssl): a CA, and server and client certificates signed
by it, so that every TCP endpoint the run opens (etcd for Flannel) demands a client
certificate. Keys stay in the run's state directory (mode 0700) and leave with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import procs


@dataclass(frozen=True)
class Credentials:
    ca: Path
    cert: Path
    key: Path


class PKI:
    def __init__(self, directory: Path, run_id: str) -> None:
        self.directory, self.run_id = directory, run_id
        self.ca = directory / "ca.pem"
        self.ca_key = directory / "ca-key.pem"

    def _openssl(self, *args: str) -> None:
        procs.run(["openssl", *args], timeout=60).check()

    def create(self) -> "PKI":
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", str(self.ca_key), "-out", str(self.ca), "-days", "2",
                      "-subj", f"/CN=pytest-overlay run {self.run_id} CA")
        return self

    def issue(self, name: str, addresses: list[str] = (), client: bool = False) -> Credentials:
        """A certificate for `name`, valid for these IP addresses (server) or as a client."""
        key, csr, cert = (self.directory / f"{name}{suffix}" for suffix in ("-key.pem", ".csr", ".pem"))
        extensions = self.directory / f"{name}.ext"
        usage = "clientAuth" if client else "serverAuth,clientAuth"
        lines = [f"extendedKeyUsage={usage}", "keyUsage=digitalSignature,keyEncipherment"]
        if addresses:
            lines.append("subjectAltName=" + ",".join(f"IP:{a}" for a in addresses))
        extensions.write_text("\n".join(lines) + "\n")
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        self._openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
                      "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions))
        return Credentials(self.ca, cert, key)
