//! The store against a real `redis-server`: leases, fencing, appends, reads, and what happens
//! when data vanishes or Redis goes away.

use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::Value;

use super::*;
use crate::cluster::testing::{free_port, RedisServer};

const OP: Duration = Duration::from_millis(500);
const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(60);

fn keys(name: &str) -> LogKeys {
    LogKeys::new("t", b"test secret", name.as_bytes())
}

fn events(range: std::ops::RangeInclusive<u64>) -> Vec<(Bytes, Option<Box<str>>)> {
    range
        .map(|n| {
            (
                Bytes::from(format!("data: {n}\n\n")),
                Some(format!("id-{n}").into_boxed_str()),
            )
        })
        .collect()
}

async fn store(redis: &RedisServer) -> Store {
    Store::connect(&redis.config(None), OP).await.expect("connect")
}

async fn won(store: &Store, keys: &LogKeys, node: &str, epoch: &str) -> (String, Position) {
    match store.claim(keys, node, LEASE, epoch, TTL).await.expect("claim") {
        Claim::Won { token, position } => (token, position),
        held => panic!("expected to win, got {held:?}"),
    }
}

async fn append(
    store: &Store,
    keys: &LogKeys,
    token: &str,
    epoch: &str,
    first: u64,
    events: &[(Bytes, Option<Box<str>>)],
) -> Appended {
    store
        .append(keys, token, epoch, first, events, None, 10_000, TTL)
        .await
        .expect("append")
}

fn seqs(logged: &[Logged]) -> Vec<u64> {
    logged.iter().map(|l| l.seq).collect()
}

#[tokio::test]
async fn a_second_node_finds_the_lease_held_until_it_is_released() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(&redis).await;
    let keys = keys("/feed");

    let (token_a, position) = won(&store, &keys, "a", "E1").await;
    assert_eq!(token_a, "a/1");
    assert_eq!(
        position,
        Position {
            epoch: "E1".into(),
            next: 1,
            upstream_id: None,
            fresh: true,
            headers: None,
        }
    );
    match store.claim(&keys, "b", LEASE, "E2", TTL).await.expect("claim") {
        Claim::Held { holder, position } => {
            assert_eq!(holder, "a/1");
            assert_eq!(&*position.epoch, "E1", "an existing epoch is kept");
            assert!(!position.fresh);
        }
        won => panic!("the lease is a's: {won:?}"),
    }

    store.release(&keys, "b/9").await.expect("release");
    assert!(
        matches!(
            store.claim(&keys, "b", LEASE, "E2", TTL).await,
            Ok(Claim::Held { .. })
        ),
        "another token cannot release the lease"
    );
    store.release(&keys, &token_a).await.expect("release");
    let (token_b, position) = won(&store, &keys, "b", "E2").await;
    assert_eq!(token_b, "b/2", "a higher generation");
    assert_eq!(&*position.epoch, "E1");
    assert!(!position.fresh);
}

#[tokio::test]
async fn an_expired_lease_goes_to_another_node_and_fences_the_old_leader() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(&redis).await;
    let keys = keys("/feed");
    let short = Duration::from_millis(200);
    let Ok(Claim::Won { token: old, .. }) = store.claim(&keys, "a", short, "E", TTL).await else {
        panic!("a wins")
    };
    assert!(store.renew(&keys, &old, short).await.expect("renew"));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (new, _) = won(&store, &keys, "b", "E").await;
    assert_eq!(new, "b/2");
    assert_eq!(
        append(&store, &keys, &old, "E", 1, &events(1..=1)).await,
        Appended::Fenced,
        "a paused leader cannot append"
    );
    assert!(!store.renew(&keys, &old, LEASE).await.expect("renew"));
    assert!(store.renew(&keys, &new, LEASE).await.expect("renew"));
    assert_eq!(
        append(&store, &keys, &new, "E", 1, &events(1..=1)).await,
        Appended::Done { next: 2 }
    );
}

#[tokio::test]
async fn appends_are_numbered_entries_and_a_retry_does_not_duplicate() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(&redis).await;
    let keys = keys("/feed");
    let (token, _) = won(&store, &keys, "a", "E").await;
    let batch = vec![
        (
            Bytes::from_static(b"id: x\ndata: \xff\x00binary\n\n"),
            Some("x".into()),
        ),
        (Bytes::from_static(b"data: two\n\n"), None),
    ];
    let done = store
        .append(&keys, &token, "E", 1, &batch, Some("up-2"), 100, TTL)
        .await
        .expect("append");
    assert_eq!(done, Appended::Done { next: 3 });

    let mut raw = redis.raw().await;
    let entries: Value = redis::cmd("XRANGE")
        .arg(&keys.log)
        .arg("-")
        .arg("+")
        .query_async(&mut raw)
        .await
        .expect("xrange");
    let expected = Value::Array(vec![
        Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"e".to_vec()),
                Value::BulkString(b"id: x\ndata: \xff\x00binary\n\n".to_vec()),
                Value::BulkString(b"i".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ]),
        ]),
        Value::Array(vec![
            Value::BulkString(b"2-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"e".to_vec()),
                Value::BulkString(b"data: two\n\n".to_vec()),
            ]),
        ]),
    ]);
    assert_eq!(entries, expected);

    // The reply was "lost": the same append again.
    let again = store
        .append(&keys, &token, "E", 1, &batch, Some("up-2"), 100, TTL)
        .await
        .expect("append");
    assert_eq!(again, Appended::Done { next: 3 });
    let len: u64 = redis::cmd("XLEN")
        .arg(&keys.log)
        .query_async(&mut raw)
        .await
        .expect("xlen");
    assert_eq!(len, 2, "nothing duplicated");

    assert_eq!(
        append(&store, &keys, &token, "E", 5, &events(5..=5)).await,
        Appended::Order { next: 3 },
        "a gap is refused"
    );
    assert_eq!(
        append(&store, &keys, &token, "E", 2, &events(2..=3)).await,
        Appended::Done { next: 4 },
        "an overlapping batch appends only what is new"
    );
    assert_eq!(
        store.position(&keys).await.expect("position"),
        Some(Position {
            epoch: "E".into(),
            next: 4,
            upstream_id: Some("up-2".to_owned()),
            fresh: false,
            headers: None,
        })
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys.log)
        .query_async(&mut raw)
        .await
        .expect("pttl");
    assert!(ttl > 0 && ttl <= 60_000, "the log expires when idle: {ttl}");
}

#[tokio::test]
async fn range_and_find_app_id_return_exactly_the_right_entries() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(&redis).await;
    let keys = keys("/feed");
    let (token, _) = won(&store, &keys, "a", "E").await;
    assert_eq!(
        append(&store, &keys, &token, "E", 1, &events(1..=600)).await,
        Appended::Done { next: 601 }
    );

    let got = store.range(&keys, 3, 5, 100).await.expect("range");
    assert_eq!(seqs(&got), [3, 4, 5]);
    assert_eq!(got[0].bytes, Bytes::from("data: 3\n\n"));
    assert_eq!(got[0].app_id.as_deref(), Some("id-3"));
    assert_eq!(seqs(&store.range(&keys, 3, 5, 2).await.expect("range")), [3, 4]);
    assert!(store.range(&keys, 700, 800, 10).await.expect("range").is_empty());
    assert!(store.range(&keys, 5, 3, 10).await.expect("range").is_empty());

    assert_eq!(
        store.find_app_id(&keys, "id-597", 601, 100).await.expect("find"),
        Some(597)
    );
    assert_eq!(
        store.find_app_id(&keys, "id-1", 601, 1000).await.expect("find"),
        Some(1),
        "across pages"
    );
    assert_eq!(
        store.find_app_id(&keys, "id-590", 601, 10).await.expect("find"),
        None,
        "bounded"
    );
    assert_eq!(
        store.find_app_id(&keys, "nope", 601, 1000).await.expect("find"),
        None
    );
    assert_eq!(
        store.find_app_id(&keys, "id-597", 597, 1000).await.expect("find"),
        None,
        "only entries before the given number"
    );
    assert_eq!(
        store.find_app_id(&keys, "id-596", 597, 1).await.expect("find"),
        Some(596)
    );
}

#[tokio::test]
async fn a_trimmed_range_returns_what_is_left() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(&redis).await;
    let keys = keys("/feed");
    let (token, _) = won(&store, &keys, "a", "E").await;
    for first in (1..=1000).step_by(100) {
        let done = store
            .append(
                &keys,
                &token,
                "E",
                first,
                &events(first..=first + 99),
                None,
                150,
                TTL,
            )
            .await
            .expect("append");
        assert_eq!(done, Appended::Done { next: first + 100 });
    }
    let left = store.range(&keys, 1, 1000, 2000).await.expect("range");
    let first = left.first().map_or(0, |l| l.seq);
    assert!(
        first > 1 && left.len() < 1000,
        "trimmed: from {first}, {} left",
        left.len()
    );
    assert_eq!(
        seqs(&left),
        (first..=1000).collect::<Vec<_>>(),
        "a contiguous tail"
    );
}

#[tokio::test]
async fn vanished_or_foreign_data_starts_a_fresh_epoch() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(&redis).await;
    let mut raw = redis.raw().await;
    let keys = keys("/feed");
    let (token, _) = won(&store, &keys, "a", "E1").await;
    append(&store, &keys, &token, "E1", 1, &events(1..=3)).await;

    // Everything lost (a restart without persistence).
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut raw)
        .await
        .expect("flushall");
    assert_eq!(store.position(&keys).await.expect("position"), None);
    assert_eq!(
        append(&store, &keys, &token, "E1", 4, &events(4..=4)).await,
        Appended::Fenced,
        "the lease went with it"
    );
    let (token, position) = won(&store, &keys, "a", "E2").await;
    assert_eq!((&*position.epoch, position.next, position.fresh), ("E2", 1, true));
    append(&store, &keys, &token, "E2", 1, &events(1..=3)).await;

    // Only the log lost (evicted) while the leader holds the lease.
    redis::cmd("DEL")
        .arg(&keys.log)
        .query_async::<()>(&mut raw)
        .await
        .expect("del");
    match store.claim(&keys, "b", LEASE, "E3", TTL).await.expect("claim") {
        Claim::Held { holder, position } => {
            assert_eq!(holder, token, "the live lease still fences");
            assert_eq!((&*position.epoch, position.next, position.fresh), ("E3", 1, true));
        }
        won => panic!("{won:?}"),
    }
    assert_eq!(
        append(&store, &keys, &token, "E2", 4, &events(4..=4)).await,
        Appended::Epoch {
            position: Some(Position {
                epoch: "E3".into(),
                next: 1,
                upstream_id: None,
                fresh: false,
                headers: None,
            })
        },
        "the leader learns the new epoch"
    );

    // Someone else's string where the hash should be.
    redis::cmd("SET")
        .arg(&keys.meta)
        .arg("garbage")
        .query_async::<()>(&mut raw)
        .await
        .expect("set");
    assert_eq!(store.position(&keys).await.expect("position"), None);
    assert_eq!(
        append(&store, &keys, &token, "E3", 1, &events(1..=1)).await,
        Appended::Epoch { position: None }
    );
    store.release(&keys, &token).await.expect("release");
    let (token, position) = won(&store, &keys, "a", "E4").await;
    assert_eq!((&*position.epoch, position.fresh), ("E4", true));
    assert_eq!(token, "a/1", "no readable generation survived the string");

    // A log ahead of its meta: XADD at `<next>-0` would fail.
    append(&store, &keys, &token, "E4", 1, &events(1..=2)).await;
    redis::cmd("XADD")
        .arg(&keys.log)
        .arg("99-0")
        .arg("e")
        .arg("x")
        .query_async::<()>(&mut raw)
        .await
        .expect("xadd");
    assert_eq!(store.position(&keys).await.expect("position"), None);
    assert_eq!(
        append(&store, &keys, &token, "E4", 3, &events(3..=3)).await,
        Appended::Epoch { position: None }
    );
    store.release(&keys, &token).await.expect("release");
    let (token, position) = won(&store, &keys, "a", "E5").await;
    assert_eq!((&*position.epoch, position.next, position.fresh), ("E5", 1, true));
    assert_eq!(token, "a/2", "the generation survives a fresh epoch");

    // A lease key that is no lease.
    store.release(&keys, &token).await.expect("release");
    redis::cmd("HSET")
        .arg(&keys.lease)
        .arg("x")
        .arg("y")
        .query_async::<()>(&mut raw)
        .await
        .expect("hset");
    let (token, position) = won(&store, &keys, "a", "E6").await;
    assert_eq!(
        (token.as_str(), &*position.epoch, position.fresh),
        ("a/3", "E5", false)
    );
}

#[tokio::test]
async fn a_blocked_read_returns_what_another_connection_appends() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(&redis).await;
    let keys = keys("/feed");
    let (token, _) = won(&store, &keys, "a", "E").await;
    append(&store, &keys, &token, "E", 1, &events(1..=2)).await;
    let mut reader = Reader::connect(&redis.config(None), Duration::from_secs(2), OP)
        .await
        .expect("reader");

    let batch = reader.read(&[(&keys.log, 0)], None, 100).await.expect("read");
    assert_eq!(seqs(batch.logs[0].as_ref().expect("entries")), [1, 2]);

    let log = keys.log.clone();
    let blocked = tokio::spawn(async move {
        let started = Instant::now();
        let batch = reader.read(&[(&log, 2)], None, 100).await;
        (batch, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    append(&store, &keys, &token, "E", 3, &events(3..=4)).await;
    let (batch, took) = blocked.await.expect("join");
    let batch = batch.expect("read");
    assert_eq!(seqs(batch.logs[0].as_ref().expect("entries")), [3, 4]);
    assert_eq!(
        batch.logs[0].as_ref().expect("entries")[1].bytes,
        Bytes::from("data: 4\n\n")
    );
    assert!(
        took < Duration::from_millis(1500),
        "returned on the append: {took:?}"
    );
}

#[tokio::test]
async fn a_wake_ends_a_blocked_read_early() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(&redis).await;
    let keys = keys("/feed");
    let wake = LogKeys::wake("t", "node-1");
    let mut reader = Reader::connect(&redis.config(None), Duration::from_secs(2), OP)
        .await
        .expect("reader");

    let (log, wake_key) = (keys.log.clone(), wake.clone());
    let blocked = tokio::spawn(async move {
        let started = Instant::now();
        let batch = reader.read(&[(&log, 0)], Some((&wake_key, "0")), 100).await;
        (reader, batch, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.wake(&wake).await.expect("wake");
    let (mut reader, batch, took) = blocked.await.expect("join");
    let batch = batch.expect("read");
    assert!(took < Duration::from_millis(1500), "woken: {took:?}");
    assert!(batch.logs[0].as_ref().expect("entries").is_empty());
    let seen = batch.wake.expect("the wake id");

    // Read after the wake seen: nothing new, so the read runs its block out.
    let started = Instant::now();
    let batch = reader
        .read(&[(&keys.log, 0)], Some((&wake, &seen)), 100)
        .await
        .expect("read");
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert!(batch.wake.is_none());
}

#[tokio::test]
async fn bad_data_is_reported_for_its_stream_only() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(&redis).await;
    let mut raw = redis.raw().await;
    let (good, odd_id, no_event, string) = (keys("/good"), keys("/odd"), keys("/no-e"), keys("/str"));
    let (token, _) = won(&store, &good, "a", "E").await;
    append(&store, &good, &token, "E", 1, &events(1..=2)).await;
    for (key, id, field) in [(&odd_id.log, "123-5", "e"), (&no_event.log, "5-0", "x")] {
        redis::cmd("XADD")
            .arg(key)
            .arg(id)
            .arg(field)
            .arg("v")
            .query_async::<()>(&mut raw)
            .await
            .expect("xadd");
    }
    let mut reader = Reader::connect(&redis.config(None), Duration::from_millis(200), OP)
        .await
        .expect("reader");

    let batch = reader
        .read(&[(&odd_id.log, 0), (&good.log, 0), (&no_event.log, 0)], None, 100)
        .await
        .expect("read");
    assert!(
        matches!(&batch.logs[0], Err(StoreError::Data(why)) if why.contains("123-5")),
        "{:?}",
        batch.logs[0]
    );
    assert_eq!(seqs(batch.logs[1].as_ref().expect("the good stream")), [1, 2]);
    assert!(
        matches!(&batch.logs[2], Err(StoreError::Data(why)) if why.contains("no event")),
        "{:?}",
        batch.logs[2]
    );

    // A key of another type fails a whole XREAD: the reader finds which one.
    redis::cmd("SET")
        .arg(&string.log)
        .arg("x")
        .query_async::<()>(&mut raw)
        .await
        .expect("set");
    let batch = reader
        .read(&[(&good.log, 2), (&string.log, 0)], None, 100)
        .await
        .expect("read");
    assert!(batch.logs[0].as_ref().expect("the good stream").is_empty());
    assert!(
        matches!(&batch.logs[1], Err(StoreError::Data(why)) if why.contains("string")),
        "{:?}",
        batch.logs[1]
    );
    // The connection survived it.
    append(&store, &good, &token, "E", 3, &events(3..=3)).await;
    let batch = reader.read(&[(&good.log, 2)], None, 100).await.expect("read");
    assert_eq!(seqs(batch.logs[0].as_ref().expect("entries")), [3]);
}

#[tokio::test]
async fn a_down_redis_fails_within_the_op_timeout() {
    let Some(mut redis) = RedisServer::start(&[]) else {
        return;
    };
    let slack = Duration::from_millis(300);
    let mut nobody = redis.config(None);
    nobody.redis = format!("redis://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let refused = Store::connect(&nobody, OP).await.expect_err("nobody listens");
    assert!(started.elapsed() < OP + slack, "{:?}", started.elapsed());
    assert_eq!(refused.fault(), StoreFault::Unreachable, "{refused}");
    let lazy = Store::lazy(&nobody, OP).expect("lazy");
    let started = Instant::now();
    assert!(lazy.position(&keys("/feed")).await.is_err());
    assert!(started.elapsed() < OP + slack);
    assert!(Reader::connect(&nobody, Duration::from_secs(1), OP)
        .await
        .is_err());

    let store = store(&redis).await;
    let keys = keys("/feed");
    let (token, _) = won(&store, &keys, "a", "E").await;
    let mut reader = Reader::connect(&redis.config(None), Duration::from_secs(1), OP)
        .await
        .expect("reader");
    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let error = store.renew(&keys, &token, LEASE).await.expect_err("down");
        assert!(started.elapsed() < OP + slack, "{error}: {:?}", started.elapsed());
        assert!(error.is_transient(), "{error}");
    }
    let started = Instant::now();
    assert!(reader.read(&[(&keys.log, 0)], None, 10).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(1) + OP + slack);

    // Back, empty: both recover by themselves.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let claim = loop {
        match store.claim(&keys, "a", LEASE, "E2", TTL).await {
            Ok(claim) => break claim,
            Err(error) => assert!(Instant::now() < deadline, "not back: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(matches!(
        claim,
        Claim::Won {
            position: Position { fresh: true, .. },
            ..
        }
    ));
    assert!(reader.read(&[(&keys.log, 0)], None, 10).await.is_ok());
}

#[tokio::test]
async fn a_stopped_redis_times_out_and_answers_again_when_continued() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(&redis).await;
    let keys = keys("/feed");
    let (token, _) = won(&store, &keys, "a", "E").await;
    redis.signal("STOP");
    let started = Instant::now();
    let error = store.renew(&keys, &token, LEASE).await.expect_err("stopped");
    let took = started.elapsed();
    redis.signal("CONT");
    assert!(matches!(error, StoreError::Timeout(_)), "{error}");
    assert!(took < OP + Duration::from_millis(300), "{took:?}");
    assert!(store.renew(&keys, &token, LEASE).await.expect("renew"));
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error() {
    let Some(redis) = RedisServer::start(&["--requirepass", "right"]) else {
        return;
    };
    let wrong = Store::connect(&redis.config(Some("wrong")), OP)
        .await
        .expect_err("refused");
    assert!(wrong.is_auth(), "{wrong}");
    let none = Store::connect(&redis.config(None), OP)
        .await
        .expect_err("refused");
    assert!(none.is_auth(), "{none}");
    let store = Store::connect(&redis.config(Some("right")), OP)
        .await
        .expect("connect");
    won(&store, &keys("/feed"), "a", "E").await;
}

#[tokio::test]
async fn the_leaders_headers_reach_whoever_claims_and_a_fenced_leader_writes_none() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let store = store(&redis).await;
    let keys = keys("/feed");
    let (token, _) = won(&store, &keys, "a", "E1").await;
    let headers = b"access-control-allow-origin: https://app.example\r\n";
    assert!(store.set_headers(&keys, &token, headers).await.expect("headers"));
    match store.claim(&keys, "b", LEASE, "E2", TTL).await.expect("claim") {
        Claim::Held { position, .. } => {
            assert_eq!(position.headers.as_deref(), Some(&headers[..]));
        }
        won => panic!("the lease is a's: {won:?}"),
    }
    assert!(
        !store
            .set_headers(&keys, "a/99", b"x-other: 1\r\n")
            .await
            .expect("headers"),
        "another token writes nothing"
    );
    match store.claim(&keys, "b", LEASE, "E2", TTL).await.expect("claim") {
        Claim::Held { position, .. } => assert_eq!(position.headers.as_deref(), Some(&headers[..])),
        won => panic!("the lease is a's: {won:?}"),
    }
}
