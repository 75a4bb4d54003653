//! The parts the cluster tests run on, checked on their own: a `redis-server` of the test's own
//! (killed, restarted on its port, with and without persistence), and HAProxy round-robin in
//! front of ssegate processes (a killed one skipped, a restarted one found again).

mod common;

use common::*;
use http::Response;

/// `SET key value` then `GET key` on `redis`.
async fn set_and_get(redis: &RedisServer, key: &str, value: &str) -> Option<String> {
    let mut connection = redis.client().await;
    let _: () = ::redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut connection)
        .await
        .expect("SET");
    get_key(redis, key).await
}

async fn get_key(redis: &RedisServer, key: &str) -> Option<String> {
    let mut connection = redis.client().await;
    ::redis::cmd("GET")
        .arg(key)
        .query_async(&mut connection)
        .await
        .expect("GET")
}

#[tokio::test]
async fn redis_server_restarts_on_its_port_and_forgets_unless_persistent() {
    let mut redis = RedisServer::start().await;
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(set_and_get(&redis, "k", "v").await.as_deref(), Some("v"));
    redis.kill();
    assert!(
        tokio::net::TcpStream::connect(redis.addr()).await.is_err(),
        "killed: nothing listens"
    );
    redis.restart().await;
    assert_eq!(redis.port(), port);
    let mut connection = redis.client().await;
    let pong: String = ::redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
    assert_eq!(get_key(&redis, "k").await, None, "no persistence: all lost");

    let mut kept = RedisServer::options().password("pw 1").persistent().start().await;
    assert_eq!(set_and_get(&kept, "k", "kept").await.as_deref(), Some("kept"));
    kept.kill();
    kept.restart().await;
    assert_eq!(get_key(&kept, "k").await.as_deref(), Some("kept"));
    // The password is required, and the unix socket reaches the same server.
    let client = ::redis::Client::open(kept.url()).expect("client");
    let mut anonymous = client.get_multiplexed_async_connection().await.expect("connect");
    let refused: Result<Option<String>, _> = ::redis::cmd("GET").arg("k").query_async(&mut anonymous).await;
    assert!(refused.is_err(), "no AUTH, no answer: {refused:?}");
    let unix = ::redis::Client::open(format!("{}?pass=pw%201", kept.unix_url())).expect("unix url");
    let mut over_unix = unix
        .get_multiplexed_async_connection()
        .await
        .expect("connect over unix");
    let value: Option<String> = ::redis::cmd("GET")
        .arg("k")
        .query_async(&mut over_unix)
        .await
        .expect("GET over unix");
    assert_eq!(value.as_deref(), Some("kept"));
}

/// Passed-through 2xx answers of `instance`'s `/` route.
async fn served(instance: &Instance) -> f64 {
    instance
        .metric("ssegate_requests_total{route=\"/\",class=\"2xx\"}")
        .await
}

#[tokio::test]
async fn haproxy_alternates_between_instances_and_skips_a_killed_one() {
    let app = Upstream::start(|_request| async { Response::new(full("ok")) }).await;
    let config = format!("[[route]]\npath = \"/\"\nupstream = \"http://{}\"\n", app.addr);
    let a = Instance::start(&config).await;
    let mut b = Instance::start(&config).await;
    let lb = Haproxy::start(&[a.addr(), b.addr()]).await;

    for _ in 0..6 {
        let reply = get(&lb.url("/hello"), &[]).await;
        assert_eq!(reply.status, 200, "{}", lb.log());
        assert_eq!(reply.text(), "ok");
    }
    eventually("each instance to serve half the requests", || async {
        let counts = (served(&a).await, served(&b).await);
        if counts == (3.0, 3.0) {
            Ok(())
        } else {
            Err(counts)
        }
    })
    .await;

    // A killed instance: its requests go to the other (a retry until the check marks it down).
    b.signal("KILL");
    b.wait_exit(TIMEOUT).await;
    for _ in 0..4 {
        assert_eq!(get(&lb.url("/"), &[]).await.status, 200, "{}", lb.log());
    }
    assert_eq!(served(&a).await, 7.0);

    // Restarted on the same addresses, it is checked up again and gets its turn.
    let (addr, admin) = (b.addr(), b.admin());
    b.restart().await;
    assert_eq!((b.addr(), b.admin()), (addr, admin));
    eventually("the restarted instance to serve again", || async {
        let _ = get(&lb.url("/"), &[]).await;
        let now = served(&b).await;
        if now > 0.0 {
            Ok(())
        } else {
            Err(now)
        }
    })
    .await;
    assert_eq!(a.count_log("ssegate listening"), 1);
}
