//! Watching configuration files: a change reloads after a short quiet period, so an
//! editor's several writes (or a rename-into-place) trigger one reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::ControlPlane;

/// Quiet time after the last file event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Keeps the file watcher alive; dropping it stops watching.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches `path` (a file or directory) and reloads `control` when it changes.
/// Must run inside a Tokio runtime.
pub fn watch(path: &Path, control: Arc<ControlPlane>) -> notify::Result<FileWatch> {
    let (events, mut receiver) = mpsc::unbounded_channel();
    let target: PathBuf = path.to_owned();
    let is_dir = path.is_dir();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let relevant = event.kind.is_create() || event.kind.is_modify() || event.kind.is_remove();
            if relevant && (is_dir || event.paths.iter().any(|changed| changed.file_name() == target.file_name())) {
                let _ = events.send(());
            }
        }
    })?;
    // Watch the directory holding a file, since editors often replace the file by renaming.
    let watched = if is_dir {
        path.to_owned()
    } else {
        path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned()
    };
    watcher.watch(&watched, RecursiveMode::NonRecursive)?;
    let task = tokio::spawn(async move {
        while receiver.recv().await.is_some() {
            loop {
                match tokio::time::timeout(DEBOUNCE, receiver.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let control = control.clone();
            let outcome = tokio::task::spawn_blocking(move || control.reload_from_source()).await;
            if let Ok(Ok(generation)) = outcome {
                tracing::info!(generation, "configuration reloaded after a file change");
            }
        }
    });
    Ok(FileWatch { _watcher: watcher, task })
}
