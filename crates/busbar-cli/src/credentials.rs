//! The local bus key of `busbar up`: created once in the data directory and kept, so
//! tokens stay valid across runs, with the admin token beside it for `busbar dlq`.
//! Both files are readable by their owner only.

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use busbar::credentials::{ADMIN, BusKey};

pub const KEY_FILE: &str = "bus.key";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The bus key and the file the bus reads it from.
#[derive(Debug, Clone)]
pub struct LocalAuth {
    pub key: BusKey,
    pub key_file: PathBuf,
}

/// Reads `<data_dir>/bus.key`, creating it with a fresh key if missing, and (re)writes
/// `<data_dir>/admin.token`.
pub fn ensure(data_dir: &Path) -> Result<LocalAuth> {
    let key_file = data_dir.join(KEY_FILE);
    let key = match std::fs::read_to_string(&key_file) {
        Ok(text) => BusKey::from_hex(&text).with_context(|| {
            format!("{} is not a bus key; delete it to get a new one (services get new tokens)", key_file.display())
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = BusKey::generate();
            write_private(&key_file, &key.to_hex(), true)?;
            key
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", key_file.display())),
    };
    let meta = std::fs::metadata(&key_file)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", key_file.display()))?;
    }
    write_private(&data_dir.join(ADMIN_TOKEN_FILE), &key.token(ADMIN), false)?;
    Ok(LocalAuth { key, key_file })
}

/// Writes `text` to a file only its owner may read. `new`: fail if it exists, so two
/// concurrent first runs cannot end up with different keys.
fn write_private(path: &Path, text: &str, new: bool) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    let mut f = opts.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(format!("{text}\n").as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_private_and_kept() {
        let dir = testkit::temp_dir();
        let first = ensure(dir.path()).unwrap();
        let mode = std::fs::metadata(&first.key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = ensure(dir.path()).unwrap();
        assert_eq!(again.key, first.key, "kept across runs");
        let admin = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).unwrap();
        assert_eq!(first.key.verify(&admin).as_deref(), Some(ADMIN));

        std::fs::write(&first.key_file, "not a key").unwrap();
        let e = ensure(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is not a bus key; delete it"), "{e}");
    }
}
