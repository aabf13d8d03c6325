//! The certificate commands: set-up, issuing a sender certificate, fingerprints.

use std::net::IpAddr;
use std::path::Path;

use backup_common::tls::{init_certs_with, CertSpec, Lifetimes};

pub struct InitArgs<'a> {
    pub out: &'a Path,
    pub server_name: &'a str,
    pub server_ips: &'a [IpAddr],
    pub sender_identities: &'a [String],
    pub lifetimes: Lifetimes,
}

pub fn init(a: InitArgs<'_>) -> anyhow::Result<()> {
    let files = init_certs_with(
        a.out,
        &CertSpec {
            server_name: a.server_name,
            server_ips: a.server_ips,
            sender_identities: a.sender_identities,
        },
        &a.lifetimes,
    )?;
    for f in files {
        println!("{}", a.out.join(f).display());
    }
    Ok(())
}

pub fn issue_sender(ca_dir: &Path, identity: &str, out: &Path, days: u32) -> anyhow::Result<()> {
    for f in backup_common::tls::issue_sender(ca_dir, identity, out, days)? {
        println!("{}", f.display());
    }
    Ok(())
}

pub fn fingerprint(file: &Path) -> anyhow::Result<()> {
    let der = backup_common::tls::read_pem_certificate(file)?;
    println!("{}", backup_common::tls::fingerprint(&der));
    Ok(())
}
