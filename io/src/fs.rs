//! Small file-system helpers on glommio: directory fsync, directory creation and listing,
//! truncation, removal. Each wraps the OS error with the operation and the path.

use crate::IoError;
use glommio::io::{Directory, DmaFile, OpenOptions};
use std::path::{Path, PathBuf};

/// fsyncs directory `dir`, making entries created, renamed or removed in it durable.
pub async fn sync_dir(dir: impl AsRef<Path>) -> Result<(), IoError> {
    let dir = dir.as_ref();
    let handle = Directory::open(dir).await.map_err(|e| IoError::os("open directory", dir, e))?;
    // IMPORTANT: without this fsync a new or removed file may not survive a crash even when
    // the file's own data was synced.
    handle.sync().await.map_err(|e| IoError::os("fsync directory", dir, e))?;
    handle.close().await.map_err(|e| IoError::os("close directory", dir, e))
}

/// Creates `dir` and its missing parents, then fsyncs each parent whose entries changed.
pub async fn create_dir_all(dir: impl AsRef<Path>) -> Result<(), IoError> {
    let dir = dir.as_ref();
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || Directory::open(p).await.is_ok() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    for p in missing.iter().rev() {
        let handle =
            Directory::create(p).await.map_err(|e| IoError::os("create directory", p, e))?;
        handle.close().await.map_err(|e| IoError::os("close directory", p, e))?;
        if let Some(parent) = p.parent().filter(|x| !x.as_os_str().is_empty()) {
            sync_dir(parent).await?;
        }
    }
    Ok(())
}

/// Lists the regular entries of `dir` (names only, unsorted). Uses the blocking `readdir`
/// under glommio's `Directory::sync_read_dir`; meant for open time, not the data path.
pub async fn list_dir(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>, IoError> {
    let dir = dir.as_ref();
    let handle = Directory::open(dir).await.map_err(|e| IoError::os("open directory", dir, e))?;
    let entries = handle.sync_read_dir().map_err(|e| IoError::os("read directory", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| IoError::os("read directory entry", dir, e))?;
        out.push(entry.path());
    }
    handle.close().await.map_err(|e| IoError::os("close directory", dir, e))?;
    Ok(out)
}

/// Truncates the file at `path` to `len_bytes` and fdatasyncs it.
pub async fn truncate_file(path: impl AsRef<Path>, len_bytes: u64) -> Result<(), IoError> {
    let path = path.as_ref();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| IoError::os("open for truncate", path, e))?;
    file.truncate(len_bytes).await.map_err(|e| IoError::os("truncate", path, e))?;
    // IMPORTANT: the new size must be durable before anything is appended after it.
    file.fdatasync().await.map_err(|e| IoError::os("fdatasync after truncate", path, e))?;
    file.close().await.map_err(|e| IoError::os("close after truncate", path, e))
}

/// Removes the file at `path` (one already gone counts as removed, see
/// [`remove_file_buffered`]). The caller fsyncs the directory (batching several removals).
///
/// Never opens a `DmaFile`: the file may be empty (a `.sst.tmp` a crash cut short) and this
/// may be the first open on the thread, which would spoil glommio's per-device poll probe
/// (see [`probe_device`]) and make every later direct read fail with `EOPNOTSUPP`.
pub async fn remove_file(path: impl AsRef<Path>) -> Result<(), IoError> {
    remove_file_buffered(path).await
}

thread_local! {
    /// Directories whose device glommio has already probed correctly on this thread.
    static PROBED_DIRS: std::cell::RefCell<std::collections::HashSet<PathBuf>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// Makes sure glommio's per-thread poll-ring probe for the device holding `dir` sees real
/// data. Cheap after the first call per directory and thread.
///
/// Why: glommio 0.9 decides, on the first `DmaFile` opened per device and thread, whether the
/// device supports io_uring polled I/O by reading the file's first block. When that file is
/// empty (a segment just created with `create_new`) the read returns 0 bytes without touching
/// the device, glommio concludes "pollable", and every later direct read on that device fails
/// with `EOPNOTSUPP` (seen on this machine's virtio disk). Opening a file with a synced,
/// non-empty first block first makes the probe exercise the device and get the true answer.
pub async fn probe_device(dir: impl AsRef<Path>) -> Result<(), IoError> {
    let dir = dir.as_ref();
    if PROBED_DIRS.with(|p| p.borrow().contains(dir)) {
        return Ok(());
    }
    let path = dir.join(".kvs-io-probe");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(&path)
        .await
        .map_err(|e| IoError::os("create probe file", &path, e))?;
    file.write_at(vec![0xa5; crate::BLOCK_BYTES as usize], 0)
        .await
        .map_err(|e| IoError::os("write probe file", &path, e))?;
    // IMPORTANT: the block must be on the device (not only in the page cache) for the probe's
    // direct read to reach the device.
    file.fdatasync().await.map_err(|e| IoError::os("fdatasync probe file", &path, e))?;
    file.close().await.map_err(|e| IoError::os("close probe file", &path, e))?;
    let dma = DmaFile::open(&path).await.map_err(|e| IoError::os("open probe file", &path, e))?;
    dma.remove().await.map_err(|e| IoError::os("remove probe file", &path, e))?;
    dma.close().await.map_err(|e| IoError::os("close probe file", &path, e))?;
    PROBED_DIRS.with(|p| p.borrow_mut().insert(dir.to_path_buf()));
    Ok(())
}

/// The size of the file at `path`, read without direct I/O.
pub async fn file_bytes(path: impl AsRef<Path>) -> Result<u64, IoError> {
    let path = path.as_ref();
    let file = OpenOptions::new()
        .read(true)
        .buffered_open(path)
        .await
        .map_err(|e| IoError::os("open for stat", path, e))?;
    let len = file.file_size().await.map_err(|e| IoError::os("stat", path, e))?;
    file.close().await.map_err(|e| IoError::os("close after stat", path, e))?;
    Ok(len)
}

/// Replaces (or creates) `dir/name` with exactly `bytes`, atomically: the bytes go to
/// `dir/tmp_name` first (created or truncated), which is fdatasync'd, renamed over `name`, and
/// then `dir` is fsync'd. A crash at any point leaves either the old `name` (and possibly a
/// partial `tmp_name`, which the caller must treat as garbage) or the complete new one.
///
/// Uses glommio's buffered file (io_uring, no alignment rules): meant for small files written
/// rarely (a manifest), not for the data path. On an error the temporary file is removed on a
/// best-effort basis.
pub async fn write_file_atomic(
    dir: impl AsRef<Path>,
    name: &str,
    tmp_name: &str,
    bytes: &[u8],
) -> Result<(), IoError> {
    let dir = dir.as_ref();
    let tmp = dir.join(tmp_name);
    let dst = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(&tmp)
        .await
        .map_err(|e| IoError::os("create temporary file", &tmp, e))?;
    let result = async {
        let mut pos = 0usize;
        while pos < bytes.len() {
            let chunk = bytes.get(pos..).unwrap_or_default().to_vec();
            let written = file
                .write_at(chunk, pos as u64)
                .await
                .map_err(|e| IoError::os("write temporary file", &tmp, e))?;
            if written == 0 {
                return Err(IoError::ShortWrite {
                    path: tmp.clone(),
                    offset: pos as u64,
                    written_bytes: 0,
                    expected_bytes: (bytes.len() - pos) as u64,
                });
            }
            pos += written;
        }
        // IMPORTANT: the data must be durable before the rename makes it visible under `name`;
        // otherwise a crash could leave `name` pointing at a torn or empty file.
        file.fdatasync().await.map_err(|e| IoError::os("fdatasync temporary file", &tmp, e))?;
        // IMPORTANT: rename is atomic: `name` is the old file or the new one, never a mix.
        file.rename(&dst).await.map_err(|e| IoError::os("rename temporary file", &dst, e))?;
        Ok(())
    }
    .await;
    let renamed = result.is_ok();
    let closed = file.close().await.map_err(|e| IoError::os("close", &dst, e));
    if let Err(e) = result {
        if !renamed {
            let _ = remove_file_buffered(&tmp).await;
        }
        return Err(e);
    }
    closed?;
    // IMPORTANT: the rename itself is durable only once the directory is fsync'd.
    sync_dir(dir).await
}

/// Reads the file at `path` whole, but at most `max_bytes` of it: returns the bytes read and
/// the file's size, so the caller can refuse a file larger than it expects without reading it.
/// Buffered I/O, for small files (a manifest).
pub async fn read_file_bounded(
    path: impl AsRef<Path>,
    max_bytes: u64,
) -> Result<(Vec<u8>, u64), IoError> {
    let path = path.as_ref();
    let file = OpenOptions::new()
        .read(true)
        .buffered_open(path)
        .await
        .map_err(|e| IoError::os("open for read", path, e))?;
    let result = async {
        let size = file.file_size().await.map_err(|e| IoError::os("stat", path, e))?;
        let want = size.min(max_bytes);
        let mut out = Vec::with_capacity(want as usize);
        while (out.len() as u64) < want {
            let chunk = file
                .read_at(out.len() as u64, (want - out.len() as u64) as usize)
                .await
                .map_err(|e| IoError::os("read", path, e))?;
            if chunk.is_empty() {
                break; // the file shrank under us: return what is there
            }
            out.extend_from_slice(&chunk);
        }
        Ok((out, size))
    }
    .await;
    file.close().await.map_err(|e| IoError::os("close after read", path, e))?;
    result
}

/// Removes the file at `path` through a buffered handle, never a `DmaFile`, so removing a
/// possibly empty file (a torn temporary file) cannot spoil glommio's per-device poll probe
/// (see [`probe_device`]). [`remove_file`] is this. The caller fsyncs the directory.
///
/// A file that is already gone counts as removed: every caller wants it absent, and an
/// earlier removal may have raced this one (a cancelled background task's unlink still
/// completes in the kernel).
pub async fn remove_file_buffered(path: impl AsRef<Path>) -> Result<(), IoError> {
    let path = path.as_ref();
    let file = match OpenOptions::new().read(true).buffered_open(path).await {
        Ok(file) => file,
        Err(e) => {
            let e = std::io::Error::from(e);
            return match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(IoError::os("open for remove", path, e)),
            };
        }
    };
    let removed = match file.remove().await.map_err(std::io::Error::from) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(IoError::os("remove", path, e)),
        _ => Ok(()),
    };
    file.close().await.map_err(|e| IoError::os("close after remove", path, e))?;
    removed
}
