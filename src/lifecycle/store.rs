//! Tenant files on disk: one `NAME.toml` per tenant in `lifecycle.tenants_dir`, holding the
//! table `[tenants.NAME]` would. Written atomically (a hidden temporary file in the same
//! directory, synced, then renamed over the old one), so the file watch never reads half a
//! tenant and a crash leaves the old file or the new one.
use crate::config::Tenant;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tenant's file in `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

/// The text of a tenant file.
pub fn text(name: &str, tenant: &Tenant) -> Result<String, String> {
    let body = toml::to_string(tenant).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Tenant {name:?}: written by fhir-fence (`fhir-fence tenant`, admin API); edits are reloaded.\n{body}"
    ))
}

/// Writes `contents` to `file` atomically (temporary file in the same directory + rename).
pub fn write_atomic(file: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    let dir = file.parent().ok_or_else(|| std::io::Error::other("a tenant file needs a directory"))?;
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("tenant");
    // Hidden and not ending in `.toml`: never read as a tenant.
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(contents.as_ref())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename itself made durable (best effort: not every platform opens directories).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back_as_the_same_tenant() {
        let dir = std::env::temp_dir().join(format!("fhir-fence-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let t: Tenant = toml::from_str(
            "prefix = \"acme\"\nupstream = \"main\"\nstatus = \"read-only\"\nisolation = \"dedicated\"\noperations = [\"meta\"]\n[limits]\nrate_per_second = 5\n",
        )
        .unwrap();
        let file = path(&dir, "acme");
        write_atomic(&file, text("acme", &t).unwrap()).unwrap();
        let back: Tenant = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(back, t);
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["acme.toml"], "no temporary file is left behind");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
