//! [`SstableBuilder`]: writes one table, sequentially, with direct I/O.
//!
//! Entries are encoded into the current block; when the next entry would push the block past
//! `block_bytes` the block is sealed (offsets, count, optional zstd, trailer with crc32c) and
//! appended to a pending buffer. Whole 4 KiB blocks of the pending buffer are written with
//! `DmaFile::write_at` once `WRITE_CHUNK_BYTES` have gathered, so memory stays bounded by one
//! chunk plus one block. `finish` appends the index, bloom and footer, writes the zero-padded
//! tail, truncates the padding, fdatasyncs, renames `*.sst.tmp` to `*.sst` and fsyncs the
//! directory.

use super::bloom::{new_filter, BloomKey, KeyBloom};
use super::format::{
    encode_entry, encode_index_entry, entry_bytes, region_crc, EntryRef, Footer, SstValueRef,
    BLOCK_RAW_BYTES_MAX, BLOOM_BYTES_MAX, COMPRESSION_NONE, COMPRESSION_ZSTD, FOOTER_BYTES,
    INDEX_BYTES_MAX, INDEX_ENTRY_HEADER_BYTES,
};
use super::{Compression, SstableOptions, TableId};
use crate::error::ShardError;
use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::types::Stamp;
use glommio::io::{DmaFile, OpenOptions};
use kvs_io::{IoError, BLOCK_BYTES};
use std::path::{Path, PathBuf};

/// Bytes gathered before a write is issued (a multiple of the 4 KiB I/O block).
const WRITE_CHUNK_BYTES: usize = 256 * 1024;
const _: () = assert!(WRITE_CHUNK_BYTES.is_multiple_of(BLOCK_BYTES as usize));

fn os_err(op: &'static str, path: &Path, e: impl Into<std::io::Error>) -> ShardError {
    ShardError::io(path, IoError::Os { op, path: path.to_path_buf(), source: e.into() })
}

fn misuse(reason: String) -> ShardError {
    ShardError::SstableInput { reason }
}

/// Builds one table. Create with [`SstableBuilder::create`], feed entries in strictly
/// increasing key order with [`SstableBuilder::add`], then [`SstableBuilder::finish`].
/// Dropping it (or a crash) before `finish` leaves only `<id>.sst.tmp`, which is never read;
/// [`SstableBuilder::abort`] removes it.
pub struct SstableBuilder {
    id: TableId,
    dir: PathBuf,
    tmp_path: PathBuf,
    final_path: PathBuf,
    options: SstableOptions,
    file: Option<DmaFile>,
    /// Encoded bytes not yet written; `pending[0]` sits at file offset `written_bytes`.
    pending: Vec<u8>,
    /// Bytes written to the file so far, always a multiple of 4 KiB.
    written_bytes: u64,
    /// Entries of the current (open) block.
    block: Vec<u8>,
    /// Offsets of the current block's entries.
    block_offsets: Vec<u32>,
    /// Encoded index entries.
    index: Vec<u8>,
    block_count: u64,
    min_key: Option<Vec<u8>>,
    last_key: Option<Vec<u8>>,
    bloom: KeyBloom,
    entry_count: u64,
    tombstone_count: u64,
    min_stamp: Option<Stamp>,
    max_stamp: Stamp,
}

impl SstableBuilder {
    /// Starts table `id` in `dir` as `<id>.sst.tmp` (an existing `.tmp` of the same id, left by
    /// a crash, is overwritten). `expected_entries` sizes the Bloom filter: pass the entry
    /// count (flush) or an upper bound (compaction); adding more keys only raises the false
    /// positive rate.
    pub async fn create(
        dir: impl AsRef<Path>,
        id: TableId,
        options: SstableOptions,
        expected_entries: u64,
    ) -> Result<Self, ShardError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let bloom_bytes =
            expected_entries.max(1).saturating_mul(u64::from(options.bloom_bits_per_key)) / 8;
        if bloom_bytes > BLOOM_BYTES_MAX - 64 {
            return Err(misuse(format!(
                "{expected_entries} expected entries need a bloom filter above {BLOOM_BYTES_MAX} bytes"
            )));
        }
        let bloom = new_filter(id.0, expected_entries, options.bloom_bits_per_key)
            .map_err(|r| misuse(format!("bloom filter: {r}")))?;
        kvs_io::probe_device(&dir).await.map_err(|e| ShardError::io(&dir, e))?;
        let tmp_path = dir.join(id.temp_file_name());
        let final_path = dir.join(id.file_name());
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&tmp_path)
            .await
            .map_err(|e| os_err("create table", &tmp_path, e))?;
        Ok(SstableBuilder {
            id,
            dir,
            tmp_path,
            final_path,
            options,
            file: Some(file),
            pending: Vec::with_capacity(WRITE_CHUNK_BYTES * 2),
            written_bytes: 0,
            block: Vec::with_capacity(options.block_bytes as usize * 2),
            block_offsets: Vec::new(),
            index: Vec::new(),
            block_count: 0,
            min_key: None,
            last_key: None,
            bloom,
            entry_count: 0,
            tombstone_count: 0,
            min_stamp: None,
            max_stamp: Stamp::default(),
        })
    }

    /// The table's id.
    pub fn id(&self) -> TableId {
        self.id
    }

    /// Entries added so far.
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// Bytes the table takes so far (written, pending and the open block), an estimate of the
    /// final size without index, bloom and footer.
    pub fn approx_bytes(&self) -> u64 {
        self.written_bytes + self.pending.len() as u64 + self.block.len() as u64
    }

    /// Adds one entry. Keys must be strictly increasing; the key and value limits of
    /// [`crate::limits`] apply.
    pub async fn add(&mut self, entry: EntryRef<'_>) -> Result<(), ShardError> {
        if entry.key.len() as u64 > KEY_BYTES_MAX {
            return Err(ShardError::KeyTooLarge {
                key_bytes: entry.key.len() as u64,
                key_bytes_max: KEY_BYTES_MAX,
            });
        }
        let value_len = match entry.value {
            SstValueRef::Value(v) => v.len(),
            SstValueRef::Tombstone => 0,
        };
        if value_len as u64 > VALUE_BYTES_MAX {
            return Err(ShardError::ValueTooLarge {
                value_bytes: value_len as u64,
                value_bytes_max: VALUE_BYTES_MAX,
            });
        }
        if let Some(last) = &self.last_key {
            if entry.key <= last.as_slice() {
                return Err(misuse(format!(
                    "key {:02x?} does not follow {:02x?} (keys must be strictly increasing)",
                    entry.key, last
                )));
            }
        }
        let size = entry_bytes(entry.key.len(), value_len, entry.expires_at_ms.is_some());
        // Block bytes once this entry and its offset are in: entries, offsets, count.
        let with = self.block.len() as u64 + size + 4 * (self.block_offsets.len() as u64 + 1) + 4;
        if !self.block_offsets.is_empty() && with > self.options.block_bytes {
            self.seal_block()?;
            self.write_full_chunks().await?;
        }
        self.block_offsets.push(self.block.len() as u32);
        encode_entry(&mut self.block, &entry);
        debug_assert!(
            self.block.len() as u64 + 4 * self.block_offsets.len() as u64 + 4
                <= BLOCK_RAW_BYTES_MAX
        );

        self.bloom.set(BloomKey::new(entry.key));
        if self.min_key.is_none() {
            self.min_key = Some(entry.key.to_vec());
        }
        match &mut self.last_key {
            Some(k) => {
                k.clear();
                k.extend_from_slice(entry.key);
            }
            None => self.last_key = Some(entry.key.to_vec()),
        }
        self.entry_count += 1;
        if entry.value == SstValueRef::Tombstone {
            self.tombstone_count += 1;
        }
        self.min_stamp = Some(self.min_stamp.map_or(entry.stamp, |s| s.min(entry.stamp)));
        self.max_stamp = self.max_stamp.max(entry.stamp);
        Ok(())
    }

    /// Closes the open block: offsets and count, compression, trailer (compression byte and
    /// crc32c seeded with the block's file offset), index entry.
    fn seal_block(&mut self) -> Result<(), ShardError> {
        let Some(last_key) = self.last_key.as_deref() else {
            return Ok(());
        };
        if self.block_offsets.is_empty() {
            return Ok(());
        }
        for off in &self.block_offsets {
            self.block.extend_from_slice(&off.to_le_bytes());
        }
        self.block.extend_from_slice(&(self.block_offsets.len() as u32).to_le_bytes());
        let raw_bytes = self.block.len();
        let offset = self.written_bytes + self.pending.len() as u64;
        let compressed = match self.options.compression {
            Compression::None => None,
            Compression::Zstd { level } => {
                zstd::bulk::compress(&self.block, level).ok().filter(|c| c.len() < raw_bytes)
            }
        };
        let (payload, kind): (&[u8], u8) = match &compressed {
            Some(c) => (c, COMPRESSION_ZSTD),
            None => (&self.block, COMPRESSION_NONE),
        };
        let crc = region_crc(offset, &[payload, &[kind]]);
        self.pending.extend_from_slice(payload);
        self.pending.push(kind);
        self.pending.extend_from_slice(&crc.to_le_bytes());
        let stored_bytes = payload.len() as u64 + 5;

        let entry_len = INDEX_ENTRY_HEADER_BYTES + last_key.len() as u64;
        if self.index.len() as u64 + entry_len + 6 + KEY_BYTES_MAX > INDEX_BYTES_MAX {
            return Err(misuse(format!("table index would exceed {INDEX_BYTES_MAX} bytes")));
        }
        encode_index_entry(
            &mut self.index,
            offset,
            stored_bytes as u32,
            raw_bytes as u32,
            last_key,
        );
        self.block_count += 1;
        self.block.clear();
        self.block_offsets.clear();
        Ok(())
    }

    /// Writes every whole `WRITE_CHUNK_BYTES` of the pending buffer.
    async fn write_full_chunks(&mut self) -> Result<(), ShardError> {
        while self.pending.len() >= WRITE_CHUNK_BYTES {
            self.write_prefix(WRITE_CHUNK_BYTES).await?;
        }
        Ok(())
    }

    /// Writes `pending[..n]` (n a multiple of 4 KiB, zero-padding past the pending bytes) at
    /// `written_bytes` and drops it from the buffer.
    async fn write_prefix(&mut self, n: usize) -> Result<(), ShardError> {
        debug_assert!(n.is_multiple_of(BLOCK_BYTES as usize));
        let file = self.file.as_ref().ok_or_else(|| misuse("builder already finished".into()))?;
        let mut buf = file.alloc_dma_buffer(n);
        let have = self.pending.len().min(n);
        let dst = buf.as_bytes_mut();
        let (data, pad) = dst.split_at_mut(have);
        data.copy_from_slice(self.pending.get(..have).unwrap_or_default());
        pad.fill(0);
        let pos = self.written_bytes;
        let written =
            file.write_at(buf, pos).await.map_err(|e| os_err("write table", &self.tmp_path, e))?;
        if written != n {
            return Err(ShardError::io(
                &self.tmp_path,
                IoError::ShortWrite {
                    path: self.tmp_path.clone(),
                    offset: pos,
                    written_bytes: written as u64,
                    expected_bytes: n as u64,
                },
            ));
        }
        self.pending.drain(..have);
        self.written_bytes += n as u64;
        Ok(())
    }

    /// Seals the last block, appends index, bloom and footer, makes the file durable and
    /// visible as `<id>.sst`, and returns its path and size in bytes. A table needs at least
    /// one entry.
    pub async fn finish(mut self) -> Result<(PathBuf, u64), ShardError> {
        if self.entry_count == 0 {
            return Err(misuse("a table needs at least one entry".into()));
        }
        self.seal_block()?;
        let index_offset = self.written_bytes + self.pending.len() as u64;
        let min_key = self.min_key.take().unwrap_or_default();
        let mut index = Vec::with_capacity(6 + min_key.len() + self.index.len());
        index.extend_from_slice(&(self.block_count as u32).to_le_bytes());
        index.extend_from_slice(&(min_key.len() as u16).to_le_bytes());
        index.extend_from_slice(&min_key);
        index.extend_from_slice(&self.index);
        let index_crc = region_crc(index_offset, &[&index]);
        self.pending.extend_from_slice(&index);

        let bloom_offset = index_offset + index.len() as u64;
        let bloom = self.bloom.to_bytes();
        let bloom_crc = region_crc(bloom_offset, &[&bloom]);
        self.pending.extend_from_slice(&bloom);

        let footer_at = bloom_offset + bloom.len() as u64;
        let footer = Footer {
            table_id: self.id.0,
            entry_count: self.entry_count,
            tombstone_count: self.tombstone_count,
            block_count: self.block_count,
            index_offset,
            index_bytes: index.len() as u64,
            bloom_offset,
            bloom_bytes: bloom.len() as u64,
            index_crc,
            bloom_crc,
            min_stamp: self.min_stamp.unwrap_or_default(),
            max_stamp: self.max_stamp,
        };
        self.pending.extend_from_slice(&footer.encode(footer_at));
        let file_bytes = footer_at + FOOTER_BYTES;
        debug_assert_eq!(self.written_bytes + self.pending.len() as u64, file_bytes);

        self.write_full_chunks().await?;
        if !self.pending.is_empty() {
            let tail = (self.pending.len() as u64).next_multiple_of(BLOCK_BYTES) as usize;
            self.write_prefix(tail).await?;
        }
        let file = self.file.take().ok_or_else(|| misuse("builder already finished".into()))?;
        let path = &self.tmp_path;
        // The last direct write was padded to 4 KiB; cut the padding so the footer ends the file.
        file.truncate(file_bytes).await.map_err(|e| os_err("truncate table", path, e))?;
        // IMPORTANT: data and size must be durable before the rename makes the table visible,
        // or a crash could leave a visible `.sst` with missing blocks.
        file.fdatasync().await.map_err(|e| os_err("fdatasync table", path, e))?;
        // IMPORTANT: the rename is the commit point: a reader never sees a partial table.
        file.rename(&self.final_path).await.map_err(|e| os_err("rename table", path, e))?;
        file.close().await.map_err(|e| os_err("close table", &self.final_path, e))?;
        // IMPORTANT: fsync the directory so the rename itself survives a crash.
        kvs_io::sync_dir(&self.dir).await.map_err(|e| ShardError::io(&self.dir, e))?;
        Ok((self.final_path.clone(), file_bytes))
    }

    /// Gives up on the table: closes and removes the `.tmp` file.
    pub async fn abort(mut self) -> Result<(), ShardError> {
        if let Some(file) = self.file.take() {
            let path = &self.tmp_path;
            file.remove().await.map_err(|e| os_err("remove table", path, e))?;
            file.close().await.map_err(|e| os_err("close table", path, e))?;
        }
        Ok(())
    }
}
