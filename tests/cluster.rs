//! Several ssegate processes sharing streams through a real Redis, behind a real HAProxy
//! (round-robin, no stickiness), in front of an app that counts its connections: one upstream
//! request per stream, exact resume on any instance, and what happens when an instance or
//! Redis dies, stalls or restarts.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::haproxy::Haproxy;
use common::process::Instance;
use common::redis::{unique_dir, RedisServer};
use common::sse::SseClient;
use common::upstream::{channel_body, Upstream};
use common::{eventually, within};
use http::{Response, StatusCode};
use http_body::Frame;
use tokio::sync::watch;

/// An app that produces one event every `every`, numbered from 1, and serves each stream from
/// the Last-Event-ID it is given (or from the next event): what a well-behaved app does.
/// Without ids, it sends no `id:` and ignores Last-Event-ID (a naive app).
struct Ticker {
    upstream: Upstream,
    state: Arc<TickerState>,
    _producer: tokio::task::JoinHandle<()>,
}

struct TickerState {
    produced: watch::Sender<u64>,
    open: AtomicUsize,
    most_open: AtomicUsize,
    requests: AtomicUsize,
    last_event_ids: Mutex<Vec<Option<String>>>,
}

/// Counts a stream as open while its task runs.
struct Open(Arc<TickerState>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    async fn start(every: Duration, ids: bool) -> Ticker {
        let state = Arc::new(TickerState {
            produced: watch::Sender::new(0),
            open: AtomicUsize::new(0),
            most_open: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            last_event_ids: Mutex::new(Vec::new()),
        });
        let producer = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    state.produced.send_modify(|n| *n += 1);
                }
            })
        };
        let shared = state.clone();
        let upstream = Upstream::start(move |request| {
            let state = shared.clone();
            async move {
                state.requests.fetch_add(1, Ordering::SeqCst);
                let last = request
                    .headers()
                    .get("last-event-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                state.last_event_ids.lock().unwrap().push(last.clone());
                let mut produced = state.produced.subscribe();
                let resume = last.filter(|_| ids).and_then(|id| id.parse::<u64>().ok());
                let mut next = match resume {
                    Some(id) => id + 1,
                    None => *produced.borrow() + 1,
                };
                let (tx, body) = channel_body();
                let open = state.open.fetch_add(1, Ordering::SeqCst) + 1;
                state.most_open.fetch_max(open, Ordering::SeqCst);
                let guard = Open(state.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    let _ = tx.send(Frame::data(Bytes::from_static(b": hello\n\n")));
                    loop {
                        let now = *produced.borrow_and_update();
                        while next <= now {
                            let event = if ids {
                                format!("id: {next}\ndata: event {next}\n\n")
                            } else {
                                format!("data: event {next}\n\n")
                            };
                            if tx.send(Frame::data(Bytes::from(event))).is_err() {
                                return;
                            }
                            next += 1;
                        }
                        tokio::select! {
                            changed = produced.changed() => if changed.is_err() { return },
                            () = tx.closed() => return,
                        }
                    }
                });
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/event-stream")
                    .header("access-control-allow-origin", "https://app.example")
                    .body(body)
                    .unwrap()
            }
        })
        .await;
        Ticker {
            upstream,
            state,
            _producer: producer,
        }
    }

    fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    fn most_open(&self) -> usize {
        self.state.most_open.load(Ordering::SeqCst)
    }

    async fn wait_open(&self, n: usize) {
        eventually(&format!("the app to have {n} streams open"), || async {
            let open = self.open();
            if open == n {
                Ok(())
            } else {
                Err(open)
            }
        })
        .await;
    }
}

/// A cluster's config: one SSE route in front of `app`, Redis at `redis`.
fn config(app: &Ticker, redis: &RedisServer, secret: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[cluster]
redis = "{redis}"
lease = "2s"
secret_file = "{secret}"

[[route]]
path = "/events"
upstream = "http://{app}"
sse = "always"
heartbeat = "1s"
on_gap = "event"
{extra}
"#,
        redis = redis.url(),
        secret = secret.display(),
        app = app.upstream.addr,
    )
}

fn secret_file() -> std::path::PathBuf {
    let dir = unique_dir("cluster-secret");
    let path = dir.join("secret");
    std::fs::write(&path, "a shared secret of the test cluster\n").unwrap();
    path
}

/// The numbers of `client`'s next `n` events (`data: event <n>`); fails on anything else.
async fn numbers(client: &mut SseClient, n: usize) -> Vec<u64> {
    numbered(client, n).await.0
}

/// [`numbers`], and the id of the last of those events (what a browser that disconnected
/// right after it would send back).
async fn numbered(client: &mut SseClient, n: usize) -> (Vec<u64>, String) {
    let events = client.events(n).await;
    let id = events.last().and_then(|e| e.id.clone()).unwrap_or_default();
    let numbers = events
        .iter()
        .map(|event| {
            assert_ne!(event.event.as_deref(), Some("gap"), "a gap event: {events:?}");
            event
                .data
                .strip_prefix("event ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not an app event: {event:?}"))
        })
        .collect();
    (numbers, id)
}

fn assert_consecutive(seen: &[u64]) {
    for pair in seen.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "lost or repeated events in {seen:?}");
    }
}

struct Cluster {
    instances: Vec<Instance>,
    /// Killed instances: not asked anything any more.
    dead: Vec<bool>,
}

impl Cluster {
    async fn start(n: usize, text: &str) -> Cluster {
        let mut instances = Vec::new();
        for _ in 0..n {
            instances.push(Instance::start(text).await);
        }
        let dead = vec![false; instances.len()];
        Cluster { instances, dead }
    }

    fn kill(&mut self, n: usize) {
        self.instances[n].kill();
        self.dead[n] = true;
    }

    fn addrs(&self) -> Vec<std::net::SocketAddr> {
        self.instances.iter().map(Instance::addr).collect()
    }

    /// Which instance leads the stream (by `/streams`).
    async fn leader(&self) -> usize {
        eventually("one instance to lead the stream", || async {
            let mut leaders = Vec::new();
            for (n, instance) in self.instances.iter().enumerate() {
                if !self.dead[n] && instance.has_role("leader").await {
                    leaders.push(n);
                }
            }
            if leaders.len() == 1 {
                Ok(leaders[0])
            } else {
                Err(leaders)
            }
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (n, instance) in self.instances.iter().enumerate() {
                eprintln!("---- instance {n} log ----\n{}", instance.log_text());
            }
        }
    }
}

trait Roles {
    async fn has_role(&self, role: &str) -> bool;
}

impl Roles for Instance {
    async fn has_role(&self, role: &str) -> bool {
        let Ok(response) = reqwest_like_get(&self.admin_url("/streams")).await else {
            return false;
        };
        response.contains(&format!("\"cluster_role\": \"{role}\""))
    }
}

async fn reqwest_like_get(url: &str) -> Result<String, String> {
    let response = tokio::time::timeout(Duration::from_secs(2), async { common::get(url, &[]).await })
        .await
        .map_err(|_| "timed out".to_owned())?;
    Ok(response.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hopping_across_instances_gets_the_exact_sequence_from_one_upstream_request() {
    let redis = RedisServer::start().await;
    // A naive app (no ids): every id the client sees is the cluster's own.
    let app = Ticker::start(Duration::from_millis(30), false).await;
    let secret = secret_file();
    let cluster = Cluster::start(3, &config(&app, &redis, &secret, "")).await;
    let haproxy = Haproxy::start(&cluster.addrs()).await;

    let mut seen = Vec::new();
    let mut last_id: Option<String> = None;
    for _ in 0..12 {
        let headers: Vec<(&str, &str)> = match &last_id {
            Some(id) => vec![("last-event-id", id.as_str())],
            None => vec![],
        };
        let mut client = within("connect", SseClient::connect(&haproxy.url("/events"), &headers)).await;
        let (got, id) = numbered(&mut client, 4).await;
        // The app's headers reach every instance's clients, not only the leader's.
        assert_eq!(
            client.header("access-control-allow-origin"),
            Some("https://app.example"),
            "{:?}",
            client.headers
        );
        seen.extend(got);
        last_id = Some(id);
    }
    assert_consecutive(&seen);
    assert_eq!(seen.len(), 48);
    assert_eq!(app.most_open(), 1, "the app saw one connection for the stream");
    let id = last_id.unwrap();
    let (epoch, number) = id.rsplit_once('-').expect("an <epoch>-<n> id");
    assert!(!epoch.is_empty() && number.parse::<u64>().is_ok(), "{id}");
    // Every instance took part: one led, the others followed from Redis.
    assert_eq!(cluster.leader().await, cluster.leader().await);
    let mut followers = 0;
    for instance in &cluster.instances {
        followers += usize::from(instance.has_role("follower").await);
    }
    assert_eq!(followers, 2, "the two other instances follow");
    // Nothing names the stream in Redis but a keyed digest.
    let mut redis_client = redis.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis_client)
        .await
        .unwrap();
    assert!(
        keys.iter()
            .all(|k| !k.contains("/events") && !k.contains("127.0.0.1")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("ssegate:{") && k.ends_with("}:log")),
        "{keys:?}"
    );
}

/// Connects to an instance directly, after `last_id` when given, with the Host every client
/// of the site sends (the stream key includes it: instances on other ports would otherwise
/// see other streams).
async fn subscribe(url: &str, last_id: Option<&str>) -> SseClient {
    let mut headers = vec![("host", "app.example")];
    headers.extend(last_id.map(|id| ("last-event-id", id)));
    within("connect", SseClient::connect(url, &headers)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_nothing_and_one_upstream_request_comes_back_within_the_lease() {
    let redis = RedisServer::start().await;
    // An app that resumes from Last-Event-ID: the next leader asks it from the last id in
    // the log, so nothing is lost in between.
    let app = Ticker::start(Duration::from_millis(20), true).await;
    let secret = secret_file();
    let mut cluster = Cluster::start(3, &config(&app, &redis, &secret, "")).await;
    let mut first = subscribe(&cluster.instances[0].url("/events"), None).await;
    let leader = cluster.leader().await;
    assert_eq!(leader, 0, "the first instance asked leads");
    let mut others: Vec<(usize, SseClient)> = Vec::new();
    for n in 1..3 {
        others.push((n, subscribe(&cluster.instances[n].url("/events"), None).await));
    }
    let (mut seen_first, first_id) = numbered(&mut first, 5).await;
    let mut seen: Vec<Vec<u64>> = Vec::new();
    for (_, client) in &mut others {
        seen.push(numbers(client, 5).await);
    }
    cluster.kill(0);
    // The killed leader's client resumes on another instance, from its last id.
    let mut moved = subscribe(&cluster.instances[1].url("/events"), Some(&first_id)).await;
    seen_first.extend(numbers(&mut moved, 60).await);
    assert_consecutive(&seen_first);
    for ((_, client), seen) in others.iter_mut().zip(&mut seen) {
        seen.extend(numbers(client, 60).await);
        assert_consecutive(seen);
    }
    app.wait_open(1).await;
    let now = cluster.leader().await;
    assert_ne!(now, 0);
    assert!(
        cluster.instances[now]
            .metric("ssegate_cluster_leases_acquired_total")
            .await
            >= 1.0,
        "the new leader counted its lease"
    );
    let asked: Vec<Option<String>> = app.state.last_event_ids.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "one request per leader: {asked:?}");
    assert!(
        asked[1].is_some(),
        "the new leader resumed the app by id: {asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_cannot_append_when_it_wakes() {
    let redis = RedisServer::start().await;
    let app = Ticker::start(Duration::from_millis(20), true).await;
    let secret = secret_file();
    let cluster = Cluster::start(2, &config(&app, &redis, &secret, "")).await;
    let _opener = subscribe(&cluster.instances[0].url("/events"), None).await;
    assert_eq!(cluster.leader().await, 0);
    let mut watcher = subscribe(&cluster.instances[1].url("/events"), None).await;
    let mut seen = numbers(&mut watcher, 5).await;
    cluster.instances[0].signal("STOP");
    // Past the lease, the other instance takes the stream over; the paused one still has
    // its upstream connection, and the app keeps writing into it.
    eventually("the other instance to lead", || async {
        if cluster.instances[1].has_role("leader").await {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;
    seen.extend(numbers(&mut watcher, 20).await);
    cluster.instances[0].signal("CONT");
    // Waking, it reads what the app sent meanwhile and tries to append it: refused.
    eventually("the woken instance's append to be refused", || async {
        let refused = cluster.instances[0]
            .metric("ssegate_cluster_fenced_appends_total")
            .await;
        let lost = cluster.instances[0]
            .metric("ssegate_cluster_leases_lost_total")
            .await;
        if refused >= 1.0 || lost >= 1.0 {
            Ok(())
        } else {
            Err((refused, lost))
        }
    })
    .await;
    seen.extend(numbers(&mut watcher, 40).await);
    assert_consecutive(&seen);
    app.wait_open(1).await;
    assert!(cluster.instances[1].has_role("leader").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_keep_receiving_while_redis_is_down_and_get_one_gap_when_it_is_back() {
    let mut redis = RedisServer::start().await;
    let (app, cluster, mut a, mut b) = two_watching(&redis).await;
    numbers(&mut a, 3).await;
    numbers(&mut b, 3).await;
    redis.kill();
    // Each instance reads the app itself now: clients go on receiving.
    app.wait_open(2).await;
    for client in [&mut a, &mut b] {
        let events = client.events(40).await;
        assert!(
            events
                .iter()
                .filter(|e| e.event.as_deref() != Some("gap"))
                .count()
                >= 38
        );
    }
    for instance in &cluster.instances {
        let ready = common::get(&instance.admin_url("/readyz"), &[]).await;
        assert_eq!(ready.status, StatusCode::OK, "still ready without Redis");
        assert!(ready.text().contains("Redis unavailable"), "{}", ready.text());
    }
    redis.restart().await;
    // Back in the cluster: one leader, one upstream request.
    app.wait_open(1).await;
    cluster.leader().await;
    for client in [&mut a, &mut b] {
        let events = client.events(40).await;
        let gaps = events
            .iter()
            .filter(|e| e.event.as_deref() == Some("gap"))
            .count();
        assert!(gaps <= 1, "at most one gap when Redis is back: {events:?}");
        let last = events.last().unwrap();
        assert!(last.data.starts_with("event "), "{events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_before_the_trimmed_log_is_a_gap() {
    let redis = RedisServer::start().await;
    let app = Ticker::start(Duration::from_millis(5), false).await;
    let secret = secret_file();
    let cluster = Cluster::start(2, &config(&app, &redis, &secret, "buffer_events = 20\n")).await;
    let mut a = subscribe(&cluster.instances[0].url("/events"), None).await;
    let (_, old) = numbered(&mut a, 2).await;
    // Far more than the buffer (and the log) keeps.
    numbers(&mut a, 200).await;
    let mut b = subscribe(&cluster.instances[1].url("/events"), Some(&old)).await;
    let first = b.next_event().await;
    assert_eq!(first.event.as_deref(), Some("gap"), "{first:?}");
    assert_eq!(first.data, old);
    numbers(&mut b, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_leader_hands_the_stream_over_and_its_clients_resume_elsewhere_exactly() {
    let redis = RedisServer::start().await;
    let app = Ticker::start(Duration::from_millis(20), true).await;
    let secret = secret_file();
    let text = config(&app, &redis, &secret, "").replace(
        "[cluster]",
        "shutdown_delay = \"1s\"\ndrain_spread = \"1s\"\nshutdown_grace = \"5s\"\n\n[cluster]",
    );
    let mut cluster = Cluster::start(3, &text).await;
    let mut drained = subscribe(&cluster.instances[0].url("/events"), None).await;
    assert_eq!(cluster.leader().await, 0);
    let mut other = subscribe(&cluster.instances[1].url("/events"), None).await;
    let mut seen_drained = numbers(&mut drained, 5).await;
    let mut seen_other = numbers(&mut other, 5).await;

    cluster.instances[0].signal("TERM");
    // For shutdown_delay it still serves, while the load balancer learns it is going.
    eventually("/readyz to answer 503", || async {
        let status = common::get(&cluster.instances[0].admin_url("/readyz"), &[])
            .await
            .status;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            Ok(())
        } else {
            Err(status)
        }
    })
    .await;
    let (more, mut last_id) = numbered(&mut drained, 10).await;
    seen_drained.extend(more);
    // The stream ends once its turn in the drain comes; the client resumes on another
    // instance from the last event it got.
    while let Some(event) = drained.next_event_or_end().await {
        let number = event.data.strip_prefix("event ").and_then(|n| n.parse().ok());
        seen_drained.push(number.unwrap_or_else(|| panic!("not an app event: {event:?}")));
        last_id = event.id.unwrap_or(last_id);
    }
    let status = cluster.instances[0].wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "a drain exits 0: {status:?}");
    assert_eq!(
        cluster.instances[0].count_log("lease is handed over"),
        1,
        "handed over at once"
    );
    cluster.dead[0] = true;
    let mut resumed = subscribe(&cluster.instances[2].url("/events"), Some(&last_id)).await;
    seen_drained.extend(numbers(&mut resumed, 30).await);
    seen_other.extend(numbers(&mut other, 60).await);
    assert_consecutive(&seen_drained);
    assert_consecutive(&seen_other);
    assert_ne!(cluster.leader().await, 0);
    app.wait_open(1).await;
}

/// An app with ids every 20 ms in front of two instances sharing `redis`, the first leading,
/// and a client on each.
async fn two_watching(redis: &RedisServer) -> (Ticker, Cluster, SseClient, SseClient) {
    let app = Ticker::start(Duration::from_millis(20), true).await;
    let cluster = Cluster::start(2, &config(&app, redis, &secret_file(), "")).await;
    let a = subscribe(&cluster.instances[0].url("/events"), None).await;
    assert_eq!(cluster.leader().await, 0);
    let b = subscribe(&cluster.instances[1].url("/events"), None).await;
    (app, cluster, a, b)
}

/// Events of `client` until `n` app events came, with the gap events among them.
async fn app_events_and_gaps(client: &mut SseClient, n: usize) -> (Vec<u64>, usize) {
    let (mut numbers, mut gaps) = (Vec::new(), 0);
    while numbers.len() < n {
        let event = client.next_event().await;
        if event.event.as_deref() == Some("gap") {
            gaps += 1;
            continue;
        }
        numbers.push(
            event
                .data
                .strip_prefix("event ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not an app event: {event:?}")),
        );
    }
    (numbers, gaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_at_start_instances_serve_locally_say_so_once_and_join_when_it_comes() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let app = Ticker::start(Duration::from_millis(20), true).await;
    let secret = secret_file();
    let cluster = Cluster::start(2, &config(&app, &redis, &secret, "")).await;
    let mut a = subscribe(&cluster.instances[0].url("/events"), None).await;
    let mut b = subscribe(&cluster.instances[1].url("/events"), None).await;
    numbers(&mut a, 5).await;
    numbers(&mut b, 5).await;
    let ready = common::get(&cluster.instances[0].admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(ready.text().contains("Redis unavailable"), "{}", ready.text());
    // Retried all along, said once.
    numbers(&mut a, 50).await;
    assert_eq!(cluster.instances[0].count_log("cluster: Redis unavailable"), 1);
    redis.restart().await;
    cluster.instances[0].wait_for_log("connected to Redis").await;
    app.wait_open(1).await;
    cluster.leader().await;
    for client in [&mut a, &mut b] {
        let (seen, gaps) = app_events_and_gaps(client, 40).await;
        assert!(gaps <= 1, "one gap at most: {seen:?}");
        assert!(seen.windows(2).all(|w| w[1] > w[0]), "in order: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_is_named_in_the_log_and_the_instance_still_serves() {
    let redis = RedisServer::options().password("the right one").start().await;
    let app = Ticker::start(Duration::from_millis(20), true).await;
    let secret = secret_file();
    let text = config(&app, &redis, &secret, "").replace(
        &redis.url(),
        &redis.url().replace("redis://", "redis://:a%20wrong%20one@"),
    );
    let instance = Instance::start(&text).await;
    let line = instance.wait_for_log("Redis refused the password").await;
    assert!(line.contains("password_file"), "{line}");
    let mut client = subscribe(&instance.url("/events"), None).await;
    numbers(&mut client, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_data_under_a_streams_keys_starts_a_new_epoch_and_crashes_nothing() {
    let redis = RedisServer::start().await;
    let (app, _cluster, mut a, mut b) = two_watching(&redis).await;
    numbers(&mut a, 5).await;
    numbers(&mut b, 5).await;
    let mut conn = redis.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ssegate:{*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys
        .iter()
        .filter(|k| k.ends_with(":log") || k.ends_with(":meta"))
    {
        let () = redis::cmd("DEL").arg(key).query_async(&mut conn).await.unwrap();
        let () = redis::cmd("SET")
            .arg(key)
            .arg("not ssegate's")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for client in [&mut a, &mut b] {
        let (seen, gaps) = app_events_and_gaps(client, 60).await;
        assert!(gaps <= 1, "one gap at most: {seen:?}");
        assert!(seen.windows(2).all(|w| w[1] > w[0]), "in order: {seen:?}");
    }
    app.wait_open(1).await;
    let epoch_type: String = redis::cmd("TYPE")
        .arg(keys.iter().find(|k| k.ends_with(":meta")).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(epoch_type, "hash", "a new epoch replaced the foreign data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_last_event_ids_get_a_gap_and_cost_redis_no_reads() {
    let redis = RedisServer::start().await;
    let app = Ticker::start(Duration::from_millis(20), false).await;
    let secret = secret_file();
    let cluster = Cluster::start(2, &config(&app, &redis, &secret, "")).await;
    let mut a = subscribe(&cluster.instances[0].url("/events"), None).await;
    let (_, real) = numbered(&mut a, 3).await;
    let mut b = subscribe(&cluster.instances[1].url("/events"), None).await;
    numbers(&mut b, 3).await;
    let mut conn = redis.client().await;
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (epoch, _) = real.rsplit_once('-').unwrap();
    let future = format!("{epoch}-99999999999");
    let overflow = format!("{epoch}-18446744073709551615");
    let long = "x".repeat(2000);
    for id in [
        "made-up",
        future.as_str(),
        overflow.as_str(),
        "-1",
        long.as_str(),
        "0",
    ] {
        let mut client = subscribe(&cluster.instances[1].url("/events"), Some(id)).await;
        let first = client.next_event().await;
        assert_eq!(first.event.as_deref(), Some("gap"), "{id}: {first:?}");
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !stats.contains("cmdstat_xrevrange") && !stats.contains("cmdstat_xrange"),
        "no log reads for made-up ids:\n{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_of_a_follower_get_every_event_once() {
    let redis = RedisServer::start().await;
    let app = Ticker::start(Duration::from_millis(10), true).await;
    let cluster = Cluster::start(2, &config(&app, &redis, &secret_file(), "")).await;
    let mut lead = subscribe(&cluster.instances[0].url("/events"), None).await;
    assert_eq!(cluster.leader().await, 0);
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(subscribe(&cluster.instances[1].url("/events"), None).await);
    }
    numbers(&mut lead, 5).await;
    let mut tasks = Vec::new();
    for mut client in clients {
        tasks.push(tokio::spawn(async move { numbers(&mut client, 300).await }));
    }
    for task in tasks {
        assert_consecutive(&task.await.unwrap());
    }
}
