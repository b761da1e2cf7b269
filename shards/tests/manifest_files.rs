//! Goal: the manifest survives reopen with exactly the state its edits built, keeps only its
//! newest generation, ignores what a crash can leave (temporary files, a superseded
//! generation), and refuses, naming the file, what a crash cannot explain (a damaged or
//! foreign-version current manifest), never falling back to an older generation.
//!
//! Method: drive `Manifest` on a glommio executor in a temporary directory; simulate crashes
//! and damage by editing the directory with plain `std::fs` between executors (the state a
//! crash at that point leaves, given write → fdatasync → rename → fsync dir → remove old).

mod support;

use kvs_shards::manifest::{
    manifest_name, Manifest, ManifestEdit, ManifestState, TableId, TableMeta, WalPosition,
};
use kvs_shards::{ShardError, Stamp};
use std::path::{Path, PathBuf};

fn table(id: TableId, level: u8, min: &str, max: &str) -> TableMeta {
    TableMeta {
        id,
        level,
        size_bytes: 4096 * (id.0 + 1),
        entries: 100 + id.0,
        min_key: min.as_bytes().to_vec(),
        max_key: max.as_bytes().to_vec(),
        max_stamp: Stamp { hlc: 1000 + id.0, node: 3 },
    }
}

/// Manifest files (of any kind) in `dir`, sorted by name.
fn manifest_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("MANIFEST-"))
        .collect();
    v.sort();
    v
}

/// Creates a manifest in `dir` and applies a flush, another flush, and a compaction.
/// Returns the final state and generation.
fn build(dir: &Path) -> (ManifestState, u64) {
    let dir = dir.to_path_buf();
    support::run(move || async move {
        let mut m = Manifest::create(&dir).await.unwrap();
        assert_eq!(m.generation(), 1);
        let a = m.allocate_table_id();
        m.apply(&ManifestEdit::flush(
            table(a, 0, "apple", "melon"),
            WalPosition { segment_id: 2, offset: 0 },
        ))
        .await
        .unwrap();
        let b = m.allocate_table_id();
        m.apply(&ManifestEdit::flush(
            table(b, 0, "kiwi", "zucchini"),
            WalPosition { segment_id: 3, offset: 0 },
        ))
        .await
        .unwrap();
        let c = m.allocate_table_id();
        let d = m.allocate_table_id();
        m.apply(&ManifestEdit::compaction(
            vec![a, b],
            vec![table(c, 1, "apple", "kiwi"), table(d, 1, "lemon", "zucchini")],
        ))
        .await
        .unwrap();
        (m.state().clone(), m.generation())
    })
}

fn open(dir: &Path) -> Result<(ManifestState, u64), ShardError> {
    let dir = dir.to_path_buf();
    support::run(move || async move {
        let m = Manifest::open(&dir).await?;
        Ok((m.state().clone(), m.generation()))
    })
}

#[test]
fn manifest_reopen_returns_the_same_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let (state, generation) = build(&dir);
    assert_eq!(generation, 4);
    assert_eq!(state.flushed, WalPosition { segment_id: 3, offset: 0 });
    assert_eq!(state.next_table_id, 5);
    assert!(state.levels()[0].is_empty());
    let l1: Vec<u64> = state.levels()[1].iter().map(|t| t.id.0).collect();
    assert_eq!(l1, vec![3, 4]);
    assert_eq!(open(&dir).unwrap(), (state.clone(), generation));
    // And again: open itself changed nothing.
    assert_eq!(open(&dir).unwrap(), (state, generation));
    assert_eq!(manifest_files(&dir), vec![manifest_name(4)]);
}

#[test]
fn manifest_keeps_only_the_newest_of_many_generations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    let state = support::run(move || async move {
        let mut m = Manifest::create(&d).await.unwrap();
        for i in 0..50u64 {
            let id = m.allocate_table_id();
            let key = format!("k{i:03}");
            m.apply(&ManifestEdit::flush(
                table(id, 0, &key, &key),
                WalPosition { segment_id: i + 1, offset: 64 },
            ))
            .await
            .unwrap();
            assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "after edit {i}");
        }
        m.state().clone()
    });
    assert_eq!(manifest_files(&dir), vec![manifest_name(51)]);
    assert_eq!(open(&dir).unwrap(), (state.clone(), 51));
    assert_eq!(state.levels()[0].len(), 50);
}

#[test]
fn manifest_ignores_and_removes_temporary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (state, generation) = build(&dir);
    // A crash before the rename of generation 5 (garbage), and one during create (empty).
    std::fs::write(dir.join(format!("{}.tmp", manifest_name(5))), b"garbage, not a manifest")
        .unwrap();
    std::fs::write(dir.join(format!("{}.tmp", manifest_name(6))), b"").unwrap();
    // A file that is not the manifest's is left alone.
    std::fs::write(dir.join("MANIFEST-notes.txt"), b"x").unwrap();
    assert_eq!(open(&dir).unwrap(), (state, generation));
    assert_eq!(manifest_files(&dir), vec![manifest_name(4), "MANIFEST-notes.txt".to_string()]);
}

#[test]
fn manifest_removes_a_superseded_generation_left_by_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    let first = support::run(move || async move {
        let m = Manifest::create(&d).await.unwrap();
        std::fs::read(m.path()).unwrap()
    });
    let (state, generation) = {
        let d = dir.clone();
        support::run(move || async move {
            let mut m = Manifest::open(&d).await.unwrap();
            let id = m.allocate_table_id();
            m.apply(&ManifestEdit::flush(
                table(id, 0, "a", "b"),
                WalPosition { segment_id: 1, offset: 64 },
            ))
            .await
            .unwrap();
            (m.state().clone(), m.generation())
        })
    };
    // The crash came after the rename of generation 2 and before generation 1 was removed.
    std::fs::write(dir.join(manifest_name(1)), &first).unwrap();
    assert_eq!(open(&dir).unwrap(), (state, generation));
    assert_eq!(manifest_files(&dir), vec![manifest_name(2)]);
}

/// Sets up a current generation 2 with a valid generation 1 beside it (as a crash before the
/// removal leaves), then damages generation 2 with `damage`. Returns generation 2's path.
fn damaged_newest(dir: &Path, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let d = dir.to_path_buf();
    let first = support::run(move || async move {
        let mut m = Manifest::create(&d).await.unwrap();
        let first = std::fs::read(m.path()).unwrap();
        let id = m.allocate_table_id();
        m.apply(&ManifestEdit::flush(
            table(id, 0, "a", "b"),
            WalPosition { segment_id: 1, offset: 64 },
        ))
        .await
        .unwrap();
        first
    });
    std::fs::write(dir.join(manifest_name(1)), first).unwrap();
    let newest = dir.join(manifest_name(2));
    let mut bytes = std::fs::read(&newest).unwrap();
    damage(&mut bytes);
    std::fs::write(&newest, bytes).unwrap();
    newest
}

#[test]
fn manifest_bit_flip_is_corruption_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    // Flip one bit in the body (a table's key bytes near the end).
    let newest = damaged_newest(&dir, |b| {
        let last = b.len() - 1;
        b[last] ^= 0x04;
    });
    match open(&dir) {
        Err(ShardError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, newest);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was removed or repaired: the evidence stays for the operator.
    assert_eq!(manifest_files(&dir), vec![manifest_name(1), manifest_name(2)]);
    let err = open(&dir).unwrap_err();
    assert!(err.to_string().contains(&manifest_name(2)), "{err}");
}

#[test]
fn manifest_truncated_current_file_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let newest = damaged_newest(&dir, |b| b.truncate(b.len() / 2));
    assert!(matches!(open(&dir), Err(ShardError::Corrupt { path, .. }) if path == newest));
}

#[test]
fn manifest_version_mismatch_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let newest = damaged_newest(&dir, |b| b[8..12].copy_from_slice(&7u32.to_le_bytes()));
    let err = open(&dir).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, ShardError::UnsupportedVersion { path, found: 7, supported: 1 } if *path == newest),
        "{err:?}"
    );
    assert!(text.contains("version 7") && text.contains("only version 1"), "{text}");
}

#[test]
fn manifest_missing_and_existing_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    assert!(matches!(open(&dir), Err(ShardError::ManifestMissing { .. })));
    build(&dir);
    let d = dir.clone();
    let err =
        support::run(move || async move { Manifest::create(&d).await.map(|_| ()) }).unwrap_err();
    assert!(
        matches!(err, ShardError::ManifestExists { path } if path == dir.join(manifest_name(4)))
    );
}

#[test]
fn manifest_invalid_edit_writes_nothing_and_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    let (state, generation) = support::run(move || async move {
        let mut m = Manifest::create(&d).await.unwrap();
        let err = m.apply(&ManifestEdit::compaction(vec![TableId(77)], vec![])).await.unwrap_err();
        assert!(matches!(err, ShardError::InvalidEdit { .. }), "{err:?}");
        assert_eq!(m.generation(), 1);
        let id = m.allocate_table_id();
        m.apply(&ManifestEdit::flush(
            table(id, 0, "a", "b"),
            WalPosition { segment_id: 1, offset: 64 },
        ))
        .await
        .unwrap();
        (m.state().clone(), m.generation())
    });
    assert_eq!(generation, 2);
    assert_eq!(open(&dir).unwrap(), (state, 2));
}
