//! Secrets at rest and on their way to a job.
//!
//! A value is sealed with AES-256-GCM under the installation's secrets key before it reaches the store, with a fresh
//! random 96-bit nonce, and the owner and name as associated data (a sealed value moved to another row does not
//! open). The key is 32 random bytes in `secrets.key` in the data directory, made on the first start, or the file an
//! admin names with `[secrets] key_file` (kept off the data directory's disk or backups). Plain values exist only in
//! the request that sets one and in the assignment that carries a job's secrets to its node or engine: the API,
//! `ferry show`, the dashboard and engines' native views show names only.

use std::collections::BTreeMap;
use std::path::Path;

use ferry_api::agent::SecretEnv;
use ferry_store::{NewJob, Sealed, SecretOwner, Tx};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The file in the data directory that holds the key when no `key_file` is configured.
pub const KEY_FILE: &str = "secrets.key";

pub struct SecretBox {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox")
    }
}

fn aad(owner: &SecretOwner, name: &str) -> Vec<u8> {
    let mut aad = b"ferry-secret-v1\0".to_vec();
    for part in [owner.scope, &owner.owner, name] {
        aad.extend_from_slice(part.as_bytes());
        aad.push(0);
    }
    aad
}

impl SecretBox {
    pub fn new(key: &[u8]) -> Result<SecretBox, String> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| "a secrets key is 32 bytes".to_string())?;
        Ok(SecretBox { key: LessSafeKey::new(key), random: SystemRandom::new() })
    }

    /// Reads an admin's key file: 32 raw bytes, or 64 hexadecimal digits (with or without a line break), readable by
    /// its owner alone.
    pub fn from_key_file(path: &Path) -> Result<SecretBox, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("[secrets] `key_file` {shown}: {e}"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "[secrets] `key_file` {shown} is readable by other users; make it the server's own with \
                 `chmod 600 {shown}`"
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("[secrets] `key_file` {shown}: {e}"))?;
        let key = if bytes.len() == 32 {
            bytes
        } else {
            let text = String::from_utf8_lossy(&bytes);
            hex::decode(text.trim()).ok().filter(|k| k.len() == 32).ok_or_else(|| {
                format!(
                    "[secrets] `key_file` {shown} holds neither 32 bytes nor 64 hexadecimal digits; make one with \
                     `openssl rand -hex 32 > {shown}`"
                )
            })?
        };
        SecretBox::new(&key)
    }

    pub fn seal(&self, owner: &SecretOwner, name: &str, value: &str) -> Result<Sealed, String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| "the system's random source failed".to_string())?;
        let mut sealed = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad(owner, name)), &mut sealed)
            .map_err(|_| "sealing the secret failed".to_string())?;
        Ok(Sealed { nonce: nonce.to_vec(), sealed })
    }

    /// The plain value; `None` when it does not open under this key (another installation's key, or a changed row).
    pub fn open(&self, owner: &SecretOwner, name: &str, sealed: &Sealed) -> Option<String> {
        let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce).ok()?;
        let mut bytes = sealed.sealed.clone();
        let plain = self.key.open_in_place(nonce, Aad::from(aad(owner, name)), &mut bytes).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }

    /// The values of a job's secrets, each its owner's own secret of that name, else its project's. `Err` says which
    /// one cannot be had and what to do.
    pub async fn resolve(
        &self,
        tx: &mut Tx,
        job: &NewJob,
    ) -> Result<Result<SecretEnv, String>, ferry_store::StoreError> {
        let mut values = BTreeMap::new();
        let user = SecretOwner::user(&job.owner);
        let project = match (&job.team, &job.project) {
            (Some(team), Some(project)) => Some(SecretOwner::project(team, project)),
            _ => None,
        };
        for (var, name) in &job.secrets {
            let mut found = None;
            for owner in std::iter::once(&user).chain(project.as_ref()) {
                if let Some(sealed) = tx.sealed_secret(owner, name).await? {
                    found = Some((owner, sealed));
                    break;
                }
            }
            let Some((owner, sealed)) = found else {
                return Ok(Err(format!(
                    "the secret `{name}` (for ${var}) no longer exists for {} or its project; set it again with \
                     `ferry secret set {name}` and submit the job again",
                    job.owner
                )));
            };
            let Some(value) = self.open(owner, name, &sealed) else {
                return Ok(Err(format!(
                    "the secret `{name}` does not open with this server's secrets key (was the key replaced?); set \
                     it again with `ferry secret set {name}` and submit the job again"
                )));
            };
            values.insert(var.clone(), value);
        }
        Ok(Ok(SecretEnv(values)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_under_its_key_owner_and_name() {
        let secrets = SecretBox::new(&[7u8; 32]).unwrap();
        let ana = SecretOwner::user("ana");
        let sealed = secrets.seal(&ana, "HF_TOKEN", "hf_abc").unwrap();
        assert!(!sealed.sealed.windows(6).any(|w| w == b"hf_abc"), "the value is not stored in the clear");
        assert_eq!(secrets.open(&ana, "HF_TOKEN", &sealed).as_deref(), Some("hf_abc"));
        assert_eq!(secrets.open(&SecretOwner::user("bo"), "HF_TOKEN", &sealed), None);
        assert_eq!(secrets.open(&ana, "OTHER", &sealed), None);
        assert_eq!(SecretBox::new(&[8u8; 32]).unwrap().open(&ana, "HF_TOKEN", &sealed), None);
        let again = secrets.seal(&ana, "HF_TOKEN", "hf_abc").unwrap();
        assert_ne!(again.nonce, sealed.nonce, "every value gets a fresh nonce");
        let mut tampered = sealed.clone();
        tampered.sealed[0] ^= 1;
        assert_eq!(secrets.open(&ana, "HF_TOKEN", &tampered), None);
    }

    #[test]
    fn a_key_file_must_be_private_and_32_bytes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(SecretBox::from_key_file(&file).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let hex_key = SecretBox::from_key_file(&file).unwrap();
        std::fs::write(&file, [0xabu8; 32]).unwrap();
        let raw_key = SecretBox::from_key_file(&file).unwrap();
        let owner = SecretOwner::user("u");
        assert_eq!(raw_key.open(&owner, "N", &hex_key.seal(&owner, "N", "v").unwrap()).as_deref(), Some("v"));
        std::fs::write(&file, "short").unwrap();
        assert!(SecretBox::from_key_file(&file).unwrap_err().contains("openssl rand -hex 32"));
        assert!(SecretBox::from_key_file(&dir.path().join("missing")).is_err());
    }
}
