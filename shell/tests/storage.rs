//! The real binary against damage on disk: a torn final batch is cut and its ids never reused;
//! damage to acknowledged data stops the start, naming where, unless `--salvage`; salvage loses
//! only the damaged record; a disk too full for a new segment still starts and serves.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::{fetch_all_ids, pub_frame, publish_many, rot_record, segment_files, serve_expecting_exit, Client, Server};

#[test]
fn a_torn_final_batch_is_cut_logged_and_its_ids_are_not_reused() {
    let dir = support::temp_dir("torn-tail");
    let mut server = Server::start(&dir, "127.0.0.1:0", &[]);
    let mut c = Client::connect(&server.url()).unwrap();
    let ids = publish_many(&mut c, "t", 100, |n| json!({"n": n}));
    assert_eq!(ids, (1..=100).collect::<Vec<_>>());
    server.kill();

    // A torn append: the last batch is cut inside its last record.
    let newest = segment_files(&dir).pop().expect("a segment");
    let mut bytes = std::fs::read(&newest).unwrap();
    let mut last_end = 0;
    ferry_core::recovery::scan_segment(&bytes, true, |offset, size, _, _| last_end = offset as usize + size);
    bytes.truncate(last_end - 5);
    std::fs::write(&newest, &bytes).unwrap();

    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let mut c = Client::connect(&server.url()).unwrap();
    assert!(server.log_text().contains("torn final batch"), "recovery must log what it cut:\n{}", server.log_text());
    let survivors = fetch_all_ids(&mut c, "t");
    assert!(!survivors.is_empty() && survivors.len() < 100, "{survivors:?}");
    assert_eq!(survivors, (1..=survivors.len() as u64).collect::<Vec<_>>(), "every batch before the torn one survives");
    c.send(&pub_frame(7, "t", json!("next"))).unwrap();
    let next = c.expect_op("puback")["id"].as_u64().unwrap();
    assert!(next > 100, "id {next} was pubacked before the crash and must not be given to another message");
    let mut server = server;
    server.kill();

    // The log went on right after the torn bytes, recording the cut: the next start neither
    // refuses the region nor reads it, and skips no more ids.
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    let mut c = Client::connect(&server.url()).unwrap();
    assert!(!server.log_text().contains("torn final batch"), "the cut was recorded:\n{}", server.log_text());
    let mut expected = survivors.clone();
    expected.push(next);
    assert_eq!(fetch_all_ids(&mut c, "t"), expected);
    c.send(&pub_frame(8, "t", json!("after"))).unwrap();
    assert_eq!(c.expect_op("puback")["id"].as_u64().unwrap(), next + 1);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_flipped_byte_in_the_newest_segment_stops_the_start_and_salvage_loses_only_that_record() {
    let dir = support::temp_dir("rot-newest");
    let mut server = Server::start(&dir, "127.0.0.1:0", &["--set", "segment_bytes_max=4194304"]);
    let mut c = Client::connect(&server.url()).unwrap();
    publish_many(&mut c, "t", 4000, |n| json!({"n": n, "pad": "p".repeat(200)}));
    server.kill();
    let file = rot_record(&dir, "t", 2000);
    let before = std::fs::read(&file).unwrap();

    let (code, stderr) = serve_expecting_exit(&dir, &[]);
    assert_ne!(code, Some(0), "{stderr}");
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    assert!(stderr.contains("refusing to start") && stderr.contains(&name) && stderr.contains("ids affected: t"), "{stderr}");
    assert!(stderr.contains("--salvage"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), before, "a refused start changes nothing");

    let server = Server::start(&dir, "127.0.0.1:0", &["--salvage"]);
    assert!(server.log_text().contains("salvage: skipping"), "{}", server.log_text());
    let mut c = Client::connect(&server.url()).unwrap();
    let expected: Vec<u64> = (1..=4000).filter(|id| *id != 2000).collect();
    assert_eq!(fetch_all_ids(&mut c, "t"), expected, "only the damaged record is lost");
    c.send(&pub_frame(1, "t", json!("next"))).unwrap();
    assert_eq!(c.expect_op("puback")["id"], 4001);
    drop(server);

    // The salvage is recorded: the next start accepts that region without --salvage.
    let server = Server::start(&dir, "127.0.0.1:0", &[]);
    assert!(server.log_text().contains("salvaged by an earlier start"), "{}", server.log_text());
    let mut c = Client::connect(&server.url()).unwrap();
    assert_eq!(fetch_all_ids(&mut c, "t").len(), 4000);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_flipped_byte_in_an_older_segment_loses_only_that_record() {
    let dir = support::temp_dir("rot-older");
    let small = ["--set", "segment_bytes_max=262144", "--set", "frame_bytes_max=65536"];
    let mut server = Server::start(&dir, "127.0.0.1:0", &small);
    let mut c = Client::connect(&server.url()).unwrap();
    publish_many(&mut c, "t", 3000, |n| json!({"n": n, "pad": "p".repeat(300)}));
    server.kill();
    assert!(segment_files(&dir).len() >= 3);
    let file = rot_record(&dir, "t", 20);
    assert_eq!(Some(&file), segment_files(&dir).first());

    let (code, stderr) = serve_expecting_exit(&dir, &small);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("ids affected: t 20\n"), "only the damaged record is named: {stderr}");

    let server = Server::start(&dir, "127.0.0.1:0", &[&small[..], &["--salvage"]].concat());
    let mut c = Client::connect(&server.url()).unwrap();
    let expected: Vec<u64> = (1..=3000).filter(|id| *id != 20).collect();
    assert_eq!(fetch_all_ids(&mut c, "t"), expected, "the records after the damaged one in its segment are intact and served");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small tmpfs mounted over a directory for the test's life (needs root).
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Option<SmallDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let status = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status().ok()?;
        status.success().then(|| SmallDisk { dir: dir.to_path_buf() })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill_disk(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let small = vec![0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
}

#[test]
fn a_disk_too_full_for_a_new_segment_still_starts_serves_and_resumes_publishing() {
    let dir = support::temp_dir("small-disk");
    let Some(_disk) = SmallDisk::mount(&dir, "24m") else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let settings = ["--set", "segment_bytes_max=16777216", "--set", "disk_full_retry_ms=100"];
    let mut server = Server::start(&dir, "127.0.0.1:0", &settings);
    let mut c = Client::connect(&server.url()).unwrap();
    c.send(&json!({"op": "sub", "req": 1, "topic": "t", "group": "g", "from": "earliest", "window": 1})).unwrap();
    c.expect_op("suback");
    publish_many(&mut c, "t", 200, |n| json!({"n": n}));
    server.kill();
    // Leave only the data itself: no prepared segment, no zero-filled tail, then no free space.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".seg.prep") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    for path in segment_files(&dir) {
        let bytes = std::fs::read(&path).unwrap();
        let valid = ferry_core::recovery::scan_segment(&bytes, true, |_, _, _, _| {}).valid_len;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(valid).unwrap();
    }
    let filler = dir.join("filler");
    fill_disk(&filler);

    let server = Server::start(&dir, "127.0.0.1:0", &settings);
    let mut sub = Client::connect(&server.url()).unwrap();
    sub.send(&json!({"op": "sub", "req": 1, "topic": "t", "group": "g", "from": "earliest", "window": 500})).unwrap();
    sub.expect_op("suback");
    let mut got = Vec::new();
    while got.len() < 200 {
        got.push(sub.expect_op("msg")["id"].as_u64().unwrap());
    }
    sub.send(&json!({"op": "ack", "topic": "t", "group": "g", "ids": got})).unwrap();
    let mut c = Client::connect(&server.url()).unwrap();
    c.send(&pub_frame(1, "t", json!("while full"))).unwrap();
    let refused = c.expect_op("error");
    assert_eq!(refused["code"], "overloaded", "{refused}");

    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        c.send(&pub_frame(2, "t", json!("space is back"))).unwrap();
        let reply = c.recv_until(Instant::now() + Duration::from_secs(2)).unwrap().expect("a reply");
        if reply["op"] == "puback" {
            break reply["id"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "publishing never resumed: {reply}");
        std::thread::sleep(Duration::from_millis(150));
    };
    assert!(id > 200);
    assert!(sub.expect_op("msg")["id"].as_u64().unwrap() >= id, "deliveries go on");
    drop(server);
}
