//! A provider's client secrets: one, or several while a secret is being rotated
//! (`client_secret_files`), in the order the vault tries them. The set is shared by every clone
//! of the provider's client and replaced whole when the files change (`reload`); which secret
//! works last is remembered (`in_use`), so that requests do not pay for a rejected secret twice.
//!
//! Why several secrets rather than one file swapped in place: the provider (Hydra) holds one
//! secret per client, and the moment it changes cannot be the moment every replica re-reads its
//! file. With the old and the new secret both configured, whichever the provider accepts works,
//! before, during and after the change (docs/keys.md, "Rotating a provider's client secret").

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, RwLock,
    },
};

use secrecy::{ExposeSecret, SecretString};

/// Shared handle: clones see the same set and the same secret in use.
#[derive(Clone)]
pub struct ClientSecrets(Arc<Inner>);

struct Inner {
    /// Empty when the secret was given inline (`client_secret`): nothing to reload.
    files: Vec<PathBuf>,
    set: RwLock<Arc<[SecretString]>>,
    /// Index into `set` of the secret that worked last (the first until one is rejected).
    in_use: AtomicUsize,
    /// Times a request found that another secret than the one in use works.
    switches: AtomicU64,
    /// Reloads refused (a file unreadable or empty): the set in place was kept.
    refused_reloads: AtomicU64,
}

impl std::fmt::Debug for ClientSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecrets")
            .field("files", &self.0.files)
            .field("count", &self.current().0.len())
            .field("in_use", &self.in_use())
            .finish_non_exhaustive()
    }
}

/// Why a set of secret files is not usable. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum ClientSecretError {
    #[error("cannot read the client secret file {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the client secret file {path} is empty")]
    Empty { path: String },
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretsReload {
    /// No files (an inline secret), or the files hold the secrets in place.
    Unchanged,
    /// A new set is in place; `in_use` is the index now tried first.
    Replaced { count: usize, in_use: usize },
}

/// A secret file's content: trailing whitespace (the newline editors and `kubectl create
/// secret --from-file` leave) is not part of the secret.
fn read_secret(path: &Path) -> Result<SecretString, ClientSecretError> {
    let text =
        zeroize::Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| ClientSecretError::Unreadable {
                path: path.display().to_string(),
                source,
            })?,
        );
    let secret = text.trim_end();
    if secret.is_empty() {
        return Err(ClientSecretError::Empty {
            path: path.display().to_string(),
        });
    }
    Ok(SecretString::from(secret.to_owned()))
}

fn read_all(files: &[PathBuf]) -> Result<Arc<[SecretString]>, ClientSecretError> {
    files.iter().map(|p| read_secret(p)).collect()
}

impl ClientSecrets {
    /// One secret given inline; never reloaded.
    pub fn inline(secret: SecretString) -> Self {
        Self::with(Vec::new(), Arc::from(vec![secret]))
    }

    /// Reads every file; all must hold a secret. `files` must not be empty.
    pub fn load(files: Vec<PathBuf>) -> Result<Self, ClientSecretError> {
        let set = read_all(&files)?;
        Ok(Self::with(files, set))
    }

    fn with(files: Vec<PathBuf>, set: Arc<[SecretString]>) -> Self {
        Self(Arc::new(Inner {
            files,
            set: RwLock::new(set),
            in_use: AtomicUsize::new(0),
            switches: AtomicU64::new(0),
            refused_reloads: AtomicU64::new(0),
        }))
    }

    /// The set in place and the index to try first.
    pub fn current(&self) -> (Arc<[SecretString]>, usize) {
        let set = self.0.set.read().unwrap_or_else(|p| p.into_inner()).clone();
        let first = self.0.in_use.load(Ordering::Acquire).min(set.len().saturating_sub(1));
        (set, first)
    }

    /// The files the secrets come from (empty for an inline secret).
    pub fn files(&self) -> &[PathBuf] {
        &self.0.files
    }

    /// The index of the secret tried first.
    pub fn in_use(&self) -> usize {
        self.0.in_use.load(Ordering::Acquire)
    }

    pub fn switches(&self) -> u64 {
        self.0.switches.load(Ordering::Relaxed)
    }

    pub fn refused_reloads(&self) -> u64 {
        self.0.refused_reloads.load(Ordering::Relaxed)
    }

    /// Records that secret `works` of `set` was accepted after `rejected` (the one in use when
    /// the request began) was refused. `true` only for the one request that makes the change,
    /// so that concurrent requests that found the same thing log and count it once; `false`
    /// too when `set` was replaced meanwhile (its indexes mean nothing in the new set).
    pub fn switch(&self, set: &Arc<[SecretString]>, rejected: usize, works: usize) -> bool {
        let guard = self.0.set.read().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&guard, set) {
            return false;
        }
        let switched = self
            .0
            .in_use
            .compare_exchange(rejected, works, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if switched {
            self.0.switches.fetch_add(1, Ordering::Relaxed);
        }
        switched
    }

    /// Re-reads the files. A set with a file that cannot be read or is empty is refused whole
    /// (the set in place stays, and the refusal is counted): a half-written Secret must not
    /// leave the vault with fewer secrets than it had. The secret in use stays first if the
    /// new set still holds it; otherwise the new set is tried from its first.
    pub fn reload(&self) -> Result<SecretsReload, ClientSecretError> {
        if self.0.files.is_empty() {
            return Ok(SecretsReload::Unchanged);
        }
        let fresh = match read_all(&self.0.files) {
            Ok(set) => set,
            Err(e) => {
                self.0.refused_reloads.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let mut guard = self.0.set.write().unwrap_or_else(|p| p.into_inner());
        let same = |a: &SecretString, b: &SecretString| a.expose_secret() == b.expose_secret();
        if guard.len() == fresh.len() && guard.iter().zip(fresh.iter()).all(|(a, b)| same(a, b)) {
            return Ok(SecretsReload::Unchanged);
        }
        let working = &guard[self.0.in_use.load(Ordering::Acquire).min(guard.len() - 1)];
        let in_use = fresh.iter().position(|s| same(s, working)).unwrap_or(0);
        *guard = fresh;
        self.0.in_use.store(in_use, Ordering::Release);
        Ok(SecretsReload::Replaced {
            count: guard.len(),
            in_use,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_set_is_read_whole_reloaded_and_a_broken_one_refused() {
        let dir = std::env::temp_dir().join(format!("token-vault-client-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = write(&dir, "a", "first\n");
        let b = write(&dir, "b", "second");
        let secrets = ClientSecrets::load(vec![a.clone(), b.clone()]).unwrap();
        let (set, first) = secrets.current();
        assert_eq!(
            set.iter().map(|s| s.expose_secret()).collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert_eq!(first, 0);
        assert_eq!(secrets.reload().unwrap(), SecretsReload::Unchanged);

        // The second works: remembered once, by the request that found it.
        assert!(secrets.switch(&set, 0, 1));
        assert!(!secrets.switch(&set, 0, 1));
        assert_eq!((secrets.in_use(), secrets.switches()), (1, 1));

        // The secret in use keeps being tried first when the files move it.
        write(&dir, "a", "second");
        write(&dir, "b", "third");
        assert_eq!(
            secrets.reload().unwrap(),
            SecretsReload::Replaced { count: 2, in_use: 0 }
        );
        // An index into the replaced set changes nothing.
        assert!(!secrets.switch(&set, 0, 1));

        // Empty or missing: refused, the set in place kept.
        write(&dir, "b", " \n");
        assert!(matches!(secrets.reload(), Err(ClientSecretError::Empty { .. })));
        std::fs::remove_file(&b).unwrap();
        let refused = secrets.reload().unwrap_err();
        assert!(matches!(refused, ClientSecretError::Unreadable { .. }));
        assert_eq!(secrets.refused_reloads(), 2);
        let (set, _) = secrets.current();
        assert_eq!(
            set.iter().map(|s| s.expose_secret()).collect::<Vec<_>>(),
            ["second", "third"]
        );
        // Neither errors nor Debug show a secret.
        assert!(!format!("{refused} {secrets:?}").contains("second"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
