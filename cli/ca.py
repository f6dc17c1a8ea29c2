"""`gateway ca`: the gateway's CA certificate, created on first use, and the bundle of system roots plus that CA
that clients point SSL_CERT_FILE at (`gateway run` writes it too).
"""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import confdir_option, data_dir_option, fail

CA_FILE = "mitmproxy-ca-cert.pem"
BUNDLE_FILE = "gateway-ca-bundle.pem"


def ensure_ca(confdir: Path) -> Path:
    """The gateway's CA certificate, created on first use exactly as mitmproxy would."""
    from mitmproxy.certs import CertStore

    confdir.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(confdir, "mitmproxy", 2048)  # the private key file stays owner-only (mitmproxy's umask)
    confdir.chmod(0o755)
    for public in confdir.glob("mitmproxy-ca-cert.*"):
        public.chmod(0o644)
    return confdir / CA_FILE


def write_ca_bundle(confdir: Path) -> Path:
    """System roots plus the gateway CA: what SSL_CERT_FILE must point to, since tunnelled (non-AI) hosts still
    present their real certificates."""
    import certifi

    ca = ensure_ca(confdir)
    bundle = confdir / BUNDLE_FILE
    bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca.read_bytes())
    bundle.chmod(0o644)
    return bundle


@click.command()
@data_dir_option
@confdir_option
@click.option("--pem", is_flag=True, help="Print the certificate itself instead of its path.")
@click.option("--bundle", is_flag=True, help="Print the path of system roots + gateway CA (for SSL_CERT_FILE).")
def ca(data_dir: Path, confdir: Path | None, pem: bool, bundle: bool) -> None:
    """Print where the gateway's CA certificate is."""
    confdir = confdir or data_dir / "ca"
    try:
        path = write_ca_bundle(confdir) if bundle else ensure_ca(confdir)
    except OSError as e:
        fail(f"cannot create the CA in {confdir}: {e.strerror}")
    click.echo(path.read_text().rstrip() if pem else str(path))
