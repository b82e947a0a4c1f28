//! What the SQLite store watches about its database file, for intake to refuse (503) before
//! harm is done: the free space of its filesystem against `store.min_free_bytes` (so the
//! deliveries already accepted keep room to be marked delivered), and whether the path still
//! names the file that was opened (deleted or replaced under the running relay, webhooks
//! would be "stored" into an unlinked file). Checked at open, every [`CHECK_EVERY`], and the
//! file's identity before each group of webhooks is answered.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often the free space and the file are checked.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The watched file and why intake is refused, if it is.
pub(super) struct FileWatch {
    path: PathBuf,
    /// Device and inode of the file opened.
    identity: Option<(u64, u64)>,
    min_free_bytes: u64,
    refusal: Mutex<Option<String>>,
    /// Set for good once the file is gone: a restart opens the file the path names now.
    vanished: Mutex<Option<String>>,
}

impl FileWatch {
    /// Watches the database at `path` (already opened) and starts the periodic check, which
    /// stops with the returned watch.
    pub(super) fn start(path: &Path, min_free_bytes: u64) -> Arc<Self> {
        let watch = Arc::new(Self {
            path: path.to_owned(),
            identity: identity(path),
            min_free_bytes,
            refusal: Mutex::new(None),
            vanished: Mutex::new(None),
        });
        watch.check();
        tokio::spawn(every_second(Arc::downgrade(&watch)));
        watch
    }

    /// Why intake is refused now, if it is.
    pub(super) fn refusal(&self) -> Option<String> {
        lock(&self.refusal).clone()
    }

    /// Checks that the path still names the file opened; `Some(reason)` once it does not.
    pub(super) fn vanished(&self) -> Option<String> {
        if let Some(reason) = lock(&self.vanished).clone() {
            return Some(reason);
        }
        let now = identity(&self.path);
        if now.is_some() && now == self.identity {
            return None;
        }
        let reason = format!(
            "the database file {} was deleted or replaced while the relay runs; restart it",
            self.path.display()
        );
        tracing::error!(%reason, "refusing webhooks");
        *lock(&self.vanished) = Some(reason.clone());
        *lock(&self.refusal) = Some(reason.clone());
        Some(reason)
    }

    /// Re-checks the file and the free space, logging when the refusal changes.
    pub(super) fn check(&self) {
        let reason = self.vanished().or_else(|| self.below_floor());
        let mut refusal = lock(&self.refusal);
        if *refusal != reason {
            match &reason {
                Some(reason) => tracing::error!(%reason, "refusing webhooks"),
                None => tracing::info!("taking webhooks again: free space is back"),
            }
            *refusal = reason;
        }
    }

    /// `Some(reason)` when the filesystem has less than `min_free_bytes` available.
    fn below_floor(&self) -> Option<String> {
        if self.min_free_bytes == 0 {
            return None;
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match rustix::fs::statvfs(dir) {
            Ok(fs) => {
                let free = fs.f_bavail.saturating_mul(fs.f_frsize);
                (free < self.min_free_bytes).then(|| {
                    format!(
                        "free space on {} is {free} bytes, below store.min_free_bytes ({})",
                        dir.display(),
                        self.min_free_bytes
                    )
                })
            }
            Err(e) => {
                // A filesystem that cannot say is not refused for it: writes tell the truth.
                tracing::warn!(error = %e, dir = %dir.display(), "cannot read free space");
                None
            }
        }
    }
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

async fn every_second(watch: Weak<FileWatch>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(watch) = watch.upgrade() else {
            return;
        };
        watch.check();
    }
}
