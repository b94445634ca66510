//! The store against a real database in a temporary directory.

use super::*;

fn id(s: &str) -> Arc<str> {
    Arc::from(s)
}

#[tokio::test]
async fn ops_group_commit_and_load_back() {
    let dir = tempfile_dir();
    let store = Store::open(&dir.join(FILE)).expect("open");
    store.submit(Op::PutSession {
        client_id: id("c"),
        record: b"rec".to_vec(),
    });
    for seq in 1..=3 {
        store.submit(Op::PutMessage {
            client_id: id("c"),
            seq,
            value: Bytes::from(vec![seq as u8]),
        });
    }
    store.submit(Op::SetInflight {
        client_id: id("c"),
        seq: 1,
        packet_id: 7,
        released: true,
    });
    store.submit(Op::DeleteMessage {
        client_id: id("c"),
        seq: 2,
    });
    store.submit(Op::PutQos2 {
        client_id: id("c"),
        packet_id: 9,
    });
    let n = store.submit(Op::PutSession {
        client_id: id("other"),
        record: b"o".to_vec(),
    });
    store.wait_committed(n).await.expect("committed");
    assert!(store.stats.commits.load(Ordering::Relaxed) >= 1);
    let loaded = store.load().expect("load");
    assert_eq!(loaded.len(), 2);
    let (cid, c) = &loaded[0];
    assert_eq!(cid, "c");
    assert_eq!(c.record, b"rec");
    let message = |seq: u64, inflight| StoredMessage {
        seq,
        value: vec![seq as u8],
        inflight,
    };
    assert_eq!(
        c.messages,
        vec![message(1, Some((7, true))), message(3, None)]
    );
    assert_eq!(c.incoming_qos2, vec![9]);
    let n = store.submit(Op::DeleteSession { client_id: id("c") });
    store.wait_committed(n).await.expect("committed");
    let loaded = store.load().expect("load");
    assert_eq!(loaded.len(), 1);
    assert_eq!(store.counts(), (1, 0));
    store.close();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_damaged_file_is_moved_aside() {
    let dir = tempfile_dir();
    let path = dir.join(FILE);
    std::fs::write(&path, vec![0x5Au8; 10_000]).expect("write junk");
    let store = Store::open(&path).expect("opens anew");
    assert_eq!(store.counts(), (0, 0));
    let aside = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains(".bad-"));
    assert!(aside, "the damaged file is kept");
    store.close();
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> PathBuf {
    use std::sync::atomic::AtomicUsize;
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "broker-store-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
