//! Goal: a node that cannot start says why and exits non-zero instead of hanging: a shard whose
//! directory cannot be opened, a port already in use, a data directory held by another node.
//! Method: spawn `kvs server` on prepared bad conditions and wait (bounded) for its exit.

#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{kvs_bin, Server};

/// Runs `kvs server` with `args`, waits at most 40 s, returns (exit code, stderr).
fn server_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(kvs_bin())
        .arg("server")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (status.code(), String::from_utf8_lossy(&out.stderr).into_owned());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kvs server did not exit on a failed start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_shard_that_cannot_open_fails_the_start_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // shard-1 must be a directory; make it a file.
    std::fs::write(dir.path().join("shard-1"), b"not a directory").unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, stderr) =
        server_exit(&["--listen", "127.0.0.1:0", "--data-dir", data, "--shards", "2"]);
    assert_eq!(code, Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("shard 1"), "the error names the shard:\n{stderr}");
}

#[test]
fn a_port_in_use_or_a_locked_data_dir_fails_the_start_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--shards", "1"]);
    let other = tempfile::tempdir().unwrap();
    let (code, stderr) =
        server_exit(&["--listen", &server.addr, "--data-dir", other.path().to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("cannot listen on") && stderr.contains(&server.addr),
        "stderr:\n{stderr}"
    );

    let (code, stderr) =
        server_exit(&["--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("in use by another kvs process"), "stderr:\n{stderr}");

    let (code, stderr) = server_exit(&["--listen", "127.0.0.1:0", "--shards", "0"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("shards"), "stderr:\n{stderr}");
}
