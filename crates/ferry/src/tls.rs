//! Whom the CLI and agents trust for an https:// server: `--ca-cert` (or `FERRY_CA_CERT`), else the certificate
//! authority in the server's data directory when the CLI runs on the server's machine, else the system's. Never
//! nothing: there is no flag to skip verification.

use std::path::Path;

use ferry_client::{CaCert, Trust};

use crate::exit::{self, CliError};
use crate::Global;

/// The trust for `g`'s server.
pub fn trust(g: &Global) -> Result<Trust, CliError> {
    if let Some(path) = &g.ca_cert {
        return read_authority(path).map(Trust::Authority);
    }
    if g.server_url().starts_with("https://") {
        if let Ok(dir) = g.data_dir() {
            let path = dir.join(ferry_server::CA_CERT_FILE);
            if path.exists() {
                return read_authority(&path).map(Trust::Authority);
            }
        }
    }
    Ok(Trust::System)
}

pub fn read_authority(path: &Path) -> Result<CaCert, CliError> {
    let pem = std::fs::read(path).map_err(|e| {
        CliError::new(
            exit::CONFIG,
            format!("cannot read the certificate authority {}: {e}; check --ca-cert or FERRY_CA_CERT", path.display()),
        )
    })?;
    CaCert::from_pem(&pem, &path.display().to_string()).map_err(|e| CliError::new(exit::CONFIG, e))
}
