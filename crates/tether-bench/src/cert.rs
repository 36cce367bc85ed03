//! `tether-bench cert`: a CA of the benchmark's own and a server certificate it signed, for
//! tether's TLS listeners (`bench/tls.sh`). The server's key is ECDSA P-256 by default (what
//! a handshake signs with: the most common key of public certificates after RSA 2048, and
//! the cheaper of the two to sign with), or an RSA key given with `--rsa-key`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
    PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write `ca.pem` (what clients trust: --ca-file), `cert.pem` and `key.pem` (the
    /// server's `[tls]`).
    #[arg(long)]
    pub dir: PathBuf,
    /// The names the server's certificate carries.
    #[arg(long, default_values = ["localhost", "127.0.0.1"])]
    pub name: Vec<String>,
    /// An RSA 2048 key for the server instead of ECDSA P-256 (rcgen cannot generate RSA keys
    /// with ring: give one in PKCS#8 PEM, e.g. from `openssl genpkey -algorithm RSA`).
    #[arg(long)]
    pub rsa_key: Option<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let files = make(&args.dir, &args.name, args.rsa_key.as_deref())?;
    println!("{}", files.ca.display());
    Ok(())
}

/// The files written.
#[derive(Debug)]
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes a new CA and a server certificate for `names`, signed by it, into `dir`.
pub fn make(dir: &Path, names: &[String], rsa_key: Option<&Path>) -> anyhow::Result<Files> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tether-bench CA");
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let key = match rsa_key {
        None => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            KeyPair::from_pem_and_sign_algo(&pem, &PKCS_RSA_SHA256)
                .with_context(|| format!("{} is not an RSA key in PKCS#8 PEM", path.display()))?
        }
    };
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().map_or("localhost", |n| n));
    let cert = params.signed_by(&key, &ca)?;

    let files = Files {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    for (path, text) in [
        (&files.ca, ca.pem()),
        (&files.cert, cert.pem()),
        (&files.key, key.serialize_pem()),
    ] {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(files)
}
