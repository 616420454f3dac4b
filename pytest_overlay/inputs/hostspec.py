"""A site's `host:` entry: the real Docker host that stands for it, reached over ssh and the
Docker API with TLS, checked field by field like the rest of the topology."""

from __future__ import annotations

import ipaddress
import socket
import re
from pathlib import Path

from .model import RemoteHost
from .yamlfile import Checker, LineDict

HOST_KEYS = {"ssh", "docker", "tls", "interface", "emulate", "address", "identity", "known_hosts"}
TLS_KEYS = ("ca", "cert", "key")
SSH_TARGET = re.compile(r"^(?P<user>[a-z_][a-z0-9_.-]{0,31})@(?P<address>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::(?P<port>\d{1,5}))?$")
DOCKER_TARGET = re.compile(r"^tcp://(?P<address>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")
INTERFACE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")


def _resolved(check: Checker, raw: LineDict, key: str, field_name: str, name: str) -> str:
    """The IP address a host name stands for, now: rules, routes and the controller's own path
    are compared by address, and a name never matches one."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise check.fail(raw, key, field_name, f"host name {name!r} does not resolve here ({e.strerror or e}); give "
                                               "its IP address") from None
    return found[0][4][0]


def parse_host(check: Checker, spec: LineDict, where: str, base: Path) -> RemoteHost:
    """A site's `host:` entry; TLS files are resolved against the topology's directory and
    must exist. No Docker TCP endpoint without TLS: it would be an unauthenticated root shell."""
    raw = check.mapping(spec["host"], where, spec, "host")
    check.keys(raw, HOST_KEYS, where)
    if "ssh" not in raw and "docker" not in raw:
        raise check.fail(spec, "host", where, "give ssh: user@address[:port] or docker: tcp://address:2376 (with tls)")
    addresses = []
    for key, pattern, example in (("ssh", SSH_TARGET, "user@address[:port]"), ("docker", DOCKER_TARGET, "tcp://address:2376")):
        if key not in raw:
            continue
        match = pattern.fullmatch(raw[key]) if isinstance(raw[key], str) else None
        if not match:
            raise check.fail(raw, key, f"{where}.{key}", f"must be {example}, got {raw[key]!r}")
        if match.group("port") and not 0 < int(match.group("port")) < 65536:
            raise check.fail(raw, key, f"{where}.{key}", f"port must be 1..65535, got {match.group('port')}")
        addresses.append(_resolved(check, raw, key, f"{where}.{key}", match.group("address").strip("[]")))
    if "address" in raw:
        try:
            addresses.insert(0, str(ipaddress.ip_address(raw["address"])))
        except ValueError:
            raise check.fail(raw, "address", f"{where}.address",
                             f"must be an IP address (where other sites reach this host), got {raw['address']!r}") from None

    def existing_file(container: LineDict, key: str, field_name: str) -> str:
        if not isinstance(container.get(key), str) or not container[key]:
            raise check.fail(container, key, field_name, f"must be the path of a file, got {container.get(key)!r}")
        file = (base / Path(container[key]).expanduser()).resolve()
        if not file.is_file():
            raise check.fail(container, key, field_name, f"no such file: {file}")
        return str(file)

    ssh_files = {key: existing_file(raw, key, f"{where}.{key}") for key in ("identity", "known_hosts") if key in raw}
    if ssh_files and "ssh" not in raw:
        raise check.fail(raw, next(iter(ssh_files)), f"{where}.ssh", "missing: identity and known_hosts are for ssh")
    tls = None
    if "docker" in raw:
        if "tls" not in raw:
            raise check.fail(raw, "docker", f"{where}.tls", "missing: Docker over TCP needs tls: {ca, cert, key} "
                                                           "(a client certificate); plain TCP is never used")
        files = check.mapping(raw["tls"], f"{where}.tls", raw, "tls")
        check.keys(files, set(TLS_KEYS), f"{where}.tls")
        tls = {}
        for key in TLS_KEYS:
            if key not in files:
                raise check.fail(raw, "tls", f"{where}.tls.{key}", "missing: the path of a PEM file")
            tls[key] = existing_file(files, key, f"{where}.tls.{key}")
    elif "tls" in raw:
        raise check.fail(raw, "tls", f"{where}.tls", "tls applies to docker: tcp://...; give docker too, or remove tls")
    emulate = raw.get("emulate", False)
    if not isinstance(emulate, bool):
        raise check.fail(raw, "emulate", f"{where}.emulate", f"must be true or false, got {emulate!r}")
    interface = raw.get("interface")
    if interface is not None and not (isinstance(interface, str) and INTERFACE.fullmatch(interface)):
        raise check.fail(raw, "interface", f"{where}.interface", f"must be an interface name, got {interface!r}")
    if emulate and not interface:
        raise check.fail(raw, "emulate", f"{where}.interface", "missing: emulate: true applies netem on an interface; "
                                                                "name it (interface: eth0)")
    if emulate and "ssh" not in raw:
        raise check.fail(raw, "emulate", f"{where}.ssh", "missing: emulate: true runs tc on the host over ssh")
    return RemoteHost(addresses[0], raw.get("ssh"), raw.get("docker"), tls, interface, emulate,
                      ssh_files.get("identity"), ssh_files.get("known_hosts"))
