//! The persistent definition store: one file per domain (`NAME.xml`) in a
//! directory (`/var/lib/vireo/domains` by default), plus an `autostart/`
//! directory of empty marker files.
//!
//! Every change is atomic: a definition is written to a temporary file in
//! the same directory, synced, renamed over the old one, and the directory
//! is synced. A crash at any point leaves either the old definition or the
//! new one, never a mix; temporary files a crash left behind are removed
//! when the store is opened.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Suffix of definition files.
const SUFFIX: &str = ".xml";
/// Prefix of temporary files (never a valid domain name start).
const TEMP_PREFIX: &str = ".tmp-";
/// Bound on one definition's size, so a corrupt store cannot exhaust memory.
pub const MAX_DEFINITION_BYTES: u64 = 1 << 20;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{name}' cannot be stored: {why}")]
    BadName { name: String, why: &'static str },
    #[error("{} is {len} bytes, more than the {MAX_DEFINITION_BYTES} allowed", path.display())]
    TooLarge { path: PathBuf, len: u64 },
    #[error("no stored definition named '{0}'")]
    NotFound(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A directory of definitions.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    autostart: PathBuf,
}

impl Store {
    /// Opens (creating, owner-only) the store in `dir` and removes the
    /// temporary files an interrupted write left.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        let autostart = dir.join("autostart");
        for d in [&dir, &autostart] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(io_err("cannot create", d))?;
        }
        let store = Self { dir, autostart };
        for entry in fs::read_dir(&store.dir).map_err(io_err("cannot list", &store.dir))? {
            let entry = entry.map_err(io_err("cannot list", &store.dir))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                log::warn!("removing {}, left by an interrupted write", path.display());
                fs::remove_file(&path).map_err(io_err("cannot remove", &path))?;
            }
        }
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        Ok(self.dir.join(format!("{name}{SUFFIX}")))
    }

    /// Names of the stored definitions, sorted.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("cannot list", &self.dir))? {
            let entry = entry.map_err(io_err("cannot list", &self.dir))?;
            let file = entry.file_name();
            let file = file.to_string_lossy();
            if let Some(name) = file.strip_suffix(SUFFIX) {
                if check_name(name).is_ok() && entry.path().is_file() {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// The stored text of `name`.
    pub fn get(&self, name: &str) -> Result<String, StoreError> {
        let path = self.path_of(name)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(name.to_owned()))
            }
            Err(e) => return Err(io_err("cannot open", &path)(e)),
        };
        let len = file.metadata().map_err(io_err("cannot stat", &path))?.len();
        if len > MAX_DEFINITION_BYTES {
            return Err(StoreError::TooLarge { path, len });
        }
        let mut text = String::new();
        io::Read::read_to_string(&mut io::Read::take(file, MAX_DEFINITION_BYTES), &mut text)
            .map_err(io_err("cannot read", &path))?;
        Ok(text)
    }

    /// Stores `text` as `name`'s definition, atomically.
    pub fn put(&self, name: &str, text: &str) -> Result<(), StoreError> {
        let path = self.path_of(name)?;
        if text.len() as u64 > MAX_DEFINITION_BYTES {
            return Err(StoreError::TooLarge {
                path,
                len: text.len() as u64,
            });
        }
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}{name}-{}", std::process::id()));
        write_atomically(&path, &temp, text.as_bytes()).map_err(|(what, at, source)| {
            StoreError::Io {
                what,
                path: at,
                source,
            }
        })
    }

    /// Removes `name`'s definition (and its autostart mark).
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path_of(name)?;
        self.set_autostart(name, false)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(name.to_owned()))
            }
            Err(e) => Err(io_err("cannot remove", &path)(e)),
        }
    }

    /// Whether `name` starts with the daemon.
    pub fn autostart(&self, name: &str) -> Result<bool, StoreError> {
        check_name(name)?;
        Ok(self.autostart.join(name).exists())
    }

    /// Marks or unmarks `name` for starting with the daemon.
    pub fn set_autostart(&self, name: &str, on: bool) -> Result<(), StoreError> {
        check_name(name)?;
        let mark = self.autostart.join(name);
        if on {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&mark)
                .map_err(io_err("cannot create", &mark))?;
        } else {
            match fs::remove_file(&mark) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err("cannot remove", &mark)(e)),
            }
        }
        sync_dir(&self.autostart)
    }
}

/// Names that are safe as file names: what libvirt allows in practice
/// (no `/`, no leading `.`, printable, not too long).
fn check_name(name: &str) -> Result<(), StoreError> {
    let bad = |why| {
        Err(StoreError::BadName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() || name.len() > 200 {
        return bad("a name is 1 to 200 bytes");
    }
    if name.starts_with('.') {
        return bad("a name cannot start with '.'");
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return bad("a name cannot contain '/' or control characters");
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the
/// new one, never a mix: written to `temp` (same directory, owner-only),
/// synced, renamed over `path`, and the directory synced. On failure the
/// temporary file is removed; the error says what failed on which path.
pub(crate) fn write_atomically(
    path: &Path,
    temp: &Path,
    bytes: &[u8],
) -> Result<(), (&'static str, PathBuf, io::Error)> {
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(temp)
            .map_err(|e| ("cannot create", temp.to_owned(), e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| ("cannot write", temp.to_owned(), e))?;
        fs::rename(temp, path).map_err(|e| ("cannot rename into place", path.to_owned(), e))?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ("cannot sync", dir.to_owned(), e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(temp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(tag: &str) -> (PathBuf, Store) {
        let dir = std::env::temp_dir().join(format!("vireo-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::open(&dir).expect("open store");
        (dir, store)
    }

    #[test]
    fn definitions_round_trip_and_replace_atomically() {
        let (dir, store) = temp_store("rt");
        store.put("web", "<domain>one</domain>").expect("put");
        store.put("db", "<domain>db</domain>").expect("put");
        store.put("web", "<domain>two</domain>").expect("replace");
        assert_eq!(store.names().expect("names"), ["db", "web"]);
        assert_eq!(store.get("web").expect("get"), "<domain>two</domain>");
        // Nothing but the definitions and the autostart directory remain.
        let mut files: Vec<String> = fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["autostart", "db.xml", "web.xml"]);
        store.remove("db").expect("remove");
        assert!(matches!(store.get("db"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.remove("db"), Err(StoreError::NotFound(_))));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_crash_mid_write_leaves_the_old_definition_and_no_litter() {
        let (dir, store) = temp_store("crash");
        store.put("vm", "<domain>old</domain>").expect("put");
        // What a crash between the temporary write and the rename leaves.
        fs::write(dir.join(format!("{TEMP_PREFIX}vm-999")), "<domain>ha").expect("litter");
        let store = Store::open(&dir).expect("reopen");
        assert_eq!(store.names().expect("names"), ["vm"]);
        assert_eq!(store.get("vm").expect("get"), "<domain>old</domain>");
        assert!(!dir.join(format!("{TEMP_PREFIX}vm-999")).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn autostart_marks_follow_the_definition() {
        let (dir, store) = temp_store("auto");
        store.put("vm", "x").expect("put");
        assert!(!store.autostart("vm").expect("query"));
        store.set_autostart("vm", true).expect("mark");
        assert!(store.autostart("vm").expect("query"));
        store.remove("vm").expect("remove");
        assert!(!store.autostart("vm").expect("query"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unsafe_names_and_huge_definitions_are_refused() {
        let (dir, store) = temp_store("names");
        for name in ["", "../etc/passwd", ".hidden", "a/b", "tab\there"] {
            assert!(
                matches!(store.put(name, "x"), Err(StoreError::BadName { .. })),
                "{name:?}"
            );
        }
        let huge = "x".repeat(MAX_DEFINITION_BYTES as usize + 1);
        assert!(matches!(
            store.put("big", &huge),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(store.names().expect("names").is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
