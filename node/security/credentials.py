"""Where a client finds its credentials: the cluster CA, a client certificate and a token.

Token precedence: `--token`, then `JOBMESH_TOKEN`, then the profile file
(`~/.config/jobmesh/config.toml`, or `JOBMESH_PROFILE`), then the admin token of the local data
dir (`JOBMESH_DATA_DIR`, default `./.jobmesh`). The CA and client certificate come from the
profile (`ca`, `cert`, `key`: file paths) or else from that data dir.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError
from node.security.cluster import ClusterFiles, TlsMaterial


@dataclass(frozen=True)
class ClientCredentials:
    """What a client presents: TLS material (None: plaintext, for `--insecure` nodes) and a token."""

    tls: TlsMaterial | None
    token: str | None


def profile_path(environ: Mapping[str, str]) -> Path:
    """The profile file a client reads."""
    if environ.get("JOBMESH_PROFILE"):
        return Path(environ["JOBMESH_PROFILE"])
    home = Path(environ.get("HOME", "~")).expanduser()
    return home / ".config" / "jobmesh" / "config.toml"


def _profile(environ: Mapping[str, str]) -> dict[str, object]:
    path = profile_path(environ)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read the profile {path}: {e}") from e


def find(environ: Mapping[str, str], token: str | None = None) -> ClientCredentials:
    """The credentials a client on this machine uses (see the module docstring)."""
    profile = _profile(environ)
    files = ClusterFiles(Path(environ.get("JOBMESH_DATA_DIR", ".jobmesh")))
    token = token or environ.get("JOBMESH_TOKEN") or _text(profile.get("token")) or files.read_admin_token()
    tls = files.client_material()
    if all(isinstance(profile.get(k), str) for k in ("ca", "cert", "key")):
        paths = [Path(str(profile[k])).expanduser() for k in ("ca", "cert", "key")]
        try:
            tls = TlsMaterial(
                ca=paths[0].read_bytes(), key=paths[2].read_bytes(), chain=paths[1].read_bytes()
            )
        except OSError as e:
            raise ConfigError(f"profile {profile_path(environ)}: {e}") from e
    return ClientCredentials(tls, token)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
