"""`python -m service keygen [--name NAME]`: a new API key, and the digest the service is configured with.

The key goes to the caller and is shown only here; the service keeps only its SHA-256, so a leaked
configuration lets no one call it.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets

__all__ = ["new_key", "register", "run"]


def new_key() -> tuple[str, str]:
    """A new key (256 random bits, URL-safe) and its SHA-256 in hex, as the service compares them."""
    key = "qsk_" + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def run(args: argparse.Namespace) -> int:
    key, digest = new_key()
    print(f"key     {key}")
    print(f"sha256  {digest}")
    print()
    print("Configure the service with one of (quotas and scopes are optional; see the README):")
    print(f"  QASYNTH_API_KEYS={args.name}:{digest}")
    print("or, in the TOML file QASYNTH_API_KEYS_FILE names:")
    print(f'  [[keys]]\n  name = "{args.name}"\n  sha256 = "{digest}"')
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    keygen = sub.add_parser("keygen", help="print a new API key and the SHA-256 to configure for it")
    keygen.add_argument(
        "--name", default="client", help="the key's label in logs and quotas (default: client)"
    )
    keygen.set_defaults(func=run)
