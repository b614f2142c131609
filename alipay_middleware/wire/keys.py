"""RSA keys in the four shapes merchants paste: PKCS#1 or PKCS#8, with or without PEM armour.

The Alipay console shows keys as bare base64 on one line; key tools write PEM files. Both popular
Python SDKs reject one shape or another; we accept all four, also written on one line with literal
``\\n`` for its line breaks (the usual ``.env`` form), and say precisely what is wrong otherwise.
Error messages name the setting, never the key material. :func:`write_key_pair` makes a new pair (the
CLI's ``keygen``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from Crypto.PublicKey import RSA

_BASE64_BODY = re.compile(r"[A-Za-z0-9+/=\s]+")


def _one_line_to_lines(text: str) -> str:
    """A key written on one line with literal ``\\n`` for its line breaks (the usual ``.env`` form,
    ``-----BEGIN PRIVATE KEY-----\\nMIIE...\\n-----END PRIVATE KEY-----``) as the lines it stands for.
    Text that already has real line breaks is left alone."""
    if "\n" in text or "\\n" not in text:
        return text
    return text.replace("\\r\\n", "\n").replace("\\n", "\n").strip()


def _import(text: str | bytes, setting: str) -> RSA.RsaKey:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str):
        raise TypeError(f"{setting} must be a str holding the key text, not {type(text).__name__}")
    stripped = _one_line_to_lines(text.strip())
    if not stripped:
        raise ValueError(f"{setting} is empty: paste the key text (PEM or the bare base64 line)")
    if "-----BEGIN" in stripped:
        if "ENCRYPTED" in stripped:
            raise ValueError(f"{setting} is encrypted with a passphrase; export it without one")
        der_source = stripped
    else:
        if not _BASE64_BODY.fullmatch(stripped):
            if os.path.exists(stripped):
                raise ValueError(
                    f"{setting} looks like a file path; pass the key's text, e.g. open(path).read()"
                )
            raise ValueError(f"{setting} is neither PEM nor base64 key text")
        try:
            der_source = base64.b64decode("".join(stripped.split()), validate=True)  # type: ignore[assignment]
        except (binascii.Error, ValueError):
            raise ValueError(f"{setting} is not valid base64 key text (truncated when pasted?)") from None
    try:
        return RSA.import_key(der_source)
    except (ValueError, IndexError, TypeError):
        raise ValueError(
            f"{setting} is not an RSA key in PKCS#1 or PKCS#8 form (PEM or bare base64)"
        ) from None


def load_private_key(text: str | bytes, setting: str = "app_private_key") -> RSA.RsaKey:
    key = _import(text, setting)
    if not key.has_private():
        raise ValueError(
            f"{setting} holds a public key; it needs your app's private key (the one you generated "
            "and never uploaded)"
        )
    return key


def load_public_key(text: str | bytes, setting: str = "alipay_public_key") -> RSA.RsaKey:
    key = _import(text, setting)
    if key.has_private():
        raise ValueError(
            f"{setting} holds a private key; it needs Alipay's public key as shown in the console "
            "(never configure a private key where a public one belongs)"
        )
    return key


def same_key(a: RSA.RsaKey, b: RSA.RsaKey) -> bool:
    return bool(a.n == b.n and a.e == b.e)


def new_key_pair(bits: int = 2048) -> tuple[bytes, bytes, str]:
    """A new RSA key pair: the private key as PKCS#8 PEM, the public key as PEM, and the public key as the
    one line of base64 (DER SubjectPublicKeyInfo) the Alipay consoles ask for."""
    if bits not in (1024, 2048, 4096):
        raise ValueError(f"bits must be 2048 (Open Platform), 1024 (legacy RSA) or 4096, got {bits!r}")
    key = RSA.generate(bits)
    public = key.public_key()
    line = base64.b64encode(public.export_key(format="DER")).decode("ascii")
    return key.export_key(format="PEM", pkcs=8) + b"\n", public.export_key(format="PEM") + b"\n", line


KEY_FILES = ("app_private_key.pem", "app_public_key.pem", "app_public_key.txt")


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never readable by others in between); an existing file is an error."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may only have narrowed it; make it exactly this
        os.write(fd, data)
    finally:
        os.close(fd)


def write_key_pair(directory: str, bits: int = 2048) -> tuple[list[str], str]:
    """A new key pair written into ``directory`` (created if missing) as :data:`KEY_FILES`: the private key
    (mode 0600), the public key as PEM and as the console's one line. The paths and that line.

    Raises :class:`FileExistsError`, before writing anything, if any of the three files exists."""
    paths = [os.path.join(directory, name) for name in KEY_FILES]
    existing = [path for path in paths if os.path.lexists(path)]
    if existing:
        verb = "exists" if len(existing) == 1 else "exist"
        raise FileExistsError(f"{', '.join(existing)} already {verb}: nothing written. Keys are never "
                              "overwritten; choose another directory, or move the old keys away first")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    private_pem, public_pem, line = new_key_pair(bits)
    _write_new(paths[0], private_pem, 0o600)
    _write_new(paths[1], public_pem, 0o644)
    _write_new(paths[2], (line + "\n").encode("ascii"), 0o644)
    return paths, line
