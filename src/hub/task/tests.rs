//! The task under a scripted source and paused time: what subscribers receive and what the
//! source was asked, as a client and an app would see them.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, Uri};
use http_body_util::{BodyExt, Full};
use tokio::time::{sleep, timeout, Instant};

use crate::config::Config;
use crate::hub::budget::ClientId;
use crate::hub::source::{Answer, Source, Step};
use crate::hub::stream::Template;
use crate::hub::{Hub, Joined, Outcome, SubscriberBody};
use crate::metrics::Metrics;
use crate::route::RouteEntry;

/// What a scripted source does next, after an open.
#[derive(Debug, Clone)]
enum Play {
    /// Answers with an event stream.
    Stream,
    /// Answers with a transient failure.
    Transient,
    /// Answers definitively, with this status.
    Definitive(u16),
    Chunk(&'static str),
    /// Nothing happens for this long.
    Wait(Duration),
    /// The stream ends cleanly.
    End,
    /// The stream breaks.
    Break,
    Panic,
}

use Play::*;

/// The plays of each open in turn, and what the source was asked. An open past the script
/// never gets an answer.
#[derive(Debug, Clone, Default)]
struct Script(Arc<Mutex<Log>>);

#[derive(Debug, Default)]
struct Log {
    opens: VecDeque<Vec<Play>>,
    /// When each open came, and its Last-Event-ID.
    opened: Vec<(Instant, Option<String>)>,
}

impl Script {
    fn new(opens: Vec<Vec<Play>>) -> Script {
        Script(Arc::new(Mutex::new(Log {
            opens: opens.into(),
            opened: Vec::new(),
        })))
    }

    fn opened(&self) -> Vec<(Instant, Option<String>)> {
        self.0.lock().unwrap().opened.clone()
    }

    fn last_ids(&self) -> Vec<Option<String>> {
        self.opened().into_iter().map(|(_, id)| id).collect()
    }
}

/// A source that plays its script.
struct Scripted {
    script: Script,
    playing: VecDeque<Play>,
    /// The end of the `Wait` in progress: kept, so a cancelled `next` resumes it.
    until: Option<Instant>,
}

impl Source for Scripted {
    fn open(&mut self, last_event_id: Option<&str>) {
        let mut log = self.script.0.lock().unwrap();
        log.opened
            .push((Instant::now(), last_event_id.map(str::to_owned)));
        self.playing = log.opens.pop_front().unwrap_or_default().into();
        self.until = None;
    }

    fn close(&mut self) {
        self.playing.clear();
        self.until = None;
    }

    async fn next(&mut self) -> Step {
        loop {
            let Some(play) = self.playing.front().cloned() else {
                return std::future::pending().await;
            };
            if let Wait(wait) = play {
                let until = *self.until.get_or_insert_with(|| Instant::now() + wait);
                tokio::time::sleep_until(until).await;
                self.until = None;
                self.playing.pop_front();
                continue;
            }
            self.playing.pop_front();
            return match play {
                Stream => Step::Answer(Answer::Stream(HeaderMap::new())),
                Transient => {
                    self.playing.clear();
                    Step::Answer(Answer::Transient("scripted failure".to_owned()))
                }
                Definitive(status) => {
                    self.playing.clear();
                    let body = Full::new(Bytes::from_static(b"no\n"))
                        .map_err(|never| match never {})
                        .boxed_unsync();
                    let response = Response::builder().status(status).body(body).unwrap();
                    Step::Answer(Answer::Definitive(response))
                }
                Chunk(text) => Step::Chunk(Bytes::from_static(text.as_bytes())),
                End => Step::End(None),
                Break => Step::End(Some("scripted break".into())),
                Panic => panic!("scripted panic"),
                Wait(_) => unreachable!("handled above"),
            };
        }
    }

    fn reconfigure(&mut self, _route: &Arc<RouteEntry>) {}

    fn origin(&self) -> &dyn fmt::Display {
        &"scripted"
    }
}

/// A hub with one route, `/events`, whose settings are `settings` (TOML keys).
struct Setup {
    hub: Hub,
    metrics: Arc<Metrics>,
    route: Arc<RouteEntry>,
    script: Script,
}

fn config(settings: &str, upstream: &str) -> Config {
    let text = format!("[[route]]\npath = \"/events\"\nupstream = \"{upstream}\"\n{settings}\n");
    Config::from_toml(&text, "test.toml").unwrap()
}

fn setup(settings: &str, opens: Vec<Vec<Play>>) -> Setup {
    let config = config(settings, "http://127.0.0.1:1");
    let metrics = Arc::new(Metrics::new());
    Setup {
        hub: Hub::new(&config, metrics.clone()),
        route: Arc::new(RouteEntry::new(config.routes[0].clone(), &metrics, None)),
        metrics,
        script: Script::new(opens),
    }
}

impl Setup {
    /// Joins the shared stream every subscription of these tests has.
    fn join(&self) -> Joined {
        let template = Template {
            uri: Uri::from_static("http://127.0.0.1:1/events"),
            headers: HeaderMap::new(),
        };
        let script = self.script.clone();
        let client = ClientId::from(IpAddr::from([127, 0, 0, 1]));
        self.hub.join_with(
            &self.route,
            Some(Box::from(&b"key"[..])),
            template,
            client,
            |_, _| Scripted {
                script,
                playing: VecDeque::new(),
                until: None,
            },
        )
    }

    /// A subscriber's body, as a new subscription (no Last-Event-ID) gets it.
    async fn subscribe(&self) -> SubscriberBody {
        served(self.join()).await
    }

    /// Applies a config of the one route with `settings` and `upstream`.
    fn reload(&self, settings: &str, upstream: &str) {
        let config = config(settings, upstream);
        let router = Arc::new(RouteEntry::router(&config, &self.metrics, None));
        self.hub.reconfigure(&router, &config);
    }
}

/// The body a joined subscription is served, once the stream can serve it.
async fn served(joined: Joined) -> SubscriberBody {
    let Joined::Pending(pending) = joined else {
        panic!("not joined")
    };
    match pending.outcome(Duration::from_secs(5)).await {
        Outcome::Subscribe(pending) => pending.attach(None, None).await,
        other => panic!("not served: {other:?}"),
    }
}

/// The next frame of `body` as text, `None` once it ended; fails if nothing comes in a minute.
async fn frame(body: &mut SubscriberBody) -> Option<String> {
    let frame = timeout(Duration::from_secs(60), body.frame())
        .await
        .expect("the subscriber got something within a minute")?
        .expect("no error");
    Some(String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap())
}

/// Everything `body` yields until its text contains `needle`.
async fn until(body: &mut SubscriberBody, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        match frame(body).await {
            Some(more) => text.push_str(&more),
            None => panic!("the body ended before {needle:?}; got {text:?}"),
        }
    }
    text
}

/// The data of each event in `text`, in order.
fn data(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn a_settled_stream_that_ends_cleanly_is_reopened_at_once_after_its_last_id() {
    let s = setup(
        "",
        vec![
            vec![Stream, Chunk("id: 1\ndata: a\n\n"), Wait(ms(2000)), End],
            vec![Stream, Chunk("id: 2\ndata: b\n\n")],
        ],
    );
    let mut body = s.subscribe().await;
    assert_eq!(data(&until(&mut body, "data: b").await), ["a", "b"]);
    let opened = s.script.opened();
    assert_eq!(s.script.last_ids(), [None, Some("1".to_owned())]);
    let gap = opened[1].0 - opened[0].0;
    assert!(
        gap >= ms(2000) && gap <= ms(2002),
        "reopened {gap:?} after the first open"
    );
}

#[tokio::test(start_paused = true)]
async fn quick_ends_back_off_up_to_reconnect_max_until_a_stream_lasts() {
    let quick = || vec![Stream, End];
    let s = setup(
        "reconnect_initial = \"100ms\"\nreconnect_max = \"400ms\"",
        vec![
            quick(),
            quick(),
            quick(),
            quick(),
            quick(),
            vec![Stream, Chunk("id: 1\ndata: a\n\n"), Wait(ms(2000)), Break],
            vec![Stream, Chunk("data: z\n\n")],
        ],
    );
    let mut body = s.subscribe().await;
    until(&mut body, "data: z").await;
    let at: Vec<Instant> = s.script.opened().into_iter().map(|(at, _)| at).collect();
    assert_eq!(at.len(), 7);
    // Each delay is drawn from the upper half of a step that doubles up to reconnect_max.
    for (i, step) in [100, 200, 400, 400, 400].into_iter().enumerate() {
        let delay = at[i + 1] - at[i];
        assert!(
            delay >= ms(step / 2) && delay <= ms(step + 1),
            "delay {i}: {delay:?}, step {step} ms"
        );
    }
    // The sixth stream lasted, with an event: its break is retried after the first step.
    let delay = at[6] - at[5] - ms(2000);
    assert!(
        delay >= ms(50) && delay <= ms(101),
        "after a lasting stream: {delay:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_keep_subscribers_served_with_heartbeats() {
    let s = setup(
        "heartbeat = \"1s\"\nreconnect_initial = \"2s\"\nreconnect_max = \"4s\"",
        vec![
            vec![Transient],
            vec![Transient],
            vec![Stream, Chunk("data: a\n\n")],
        ],
    );
    let started = Instant::now();
    let mut body = s.subscribe().await;
    assert_eq!(
        Instant::now(),
        started,
        "served at once, not after the connect timeout"
    );
    let text = until(&mut body, "data: a").await;
    let (outage, _) = text.split_once("data: a").unwrap();
    assert!(
        outage.matches(":\n").count() >= 2,
        "heartbeats while the app was down: {outage:?}"
    );
    assert_eq!(s.script.opened().len(), 3);
    assert_eq!(s.route.metrics.upstream_failures.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_announced_in_order_with_a_gap_event() {
    let s = setup(
        "on_gap = \"event\"",
        vec![
            vec![Stream, Chunk("id: 7\ndata: a\n\n"), Break],
            vec![Transient],
            vec![Stream, Chunk("id: 8\ndata: b\n\n")],
        ],
    );
    let mut body = s.subscribe().await;
    let text = until(&mut body, "data: b").await;
    assert_eq!(data(&text), ["a", "7", "b"], "{text:?}");
    let gap = text.split("\n\n").find(|event| event.contains("event: gap"));
    assert!(gap.is_some_and(|gap| gap.contains("data: 7")), "{text:?}");
    assert_eq!(
        s.script.last_ids(),
        [None, Some("7".to_owned()), Some("7".to_owned())]
    );
    assert_eq!(s.route.metrics.outage_gaps.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_apps_replay_after_a_reconnect_is_dropped() {
    let s = setup(
        "",
        vec![
            vec![
                Stream,
                Chunk("id: 1\ndata: a\n\nid: 2\ndata: b\n\n"),
                Wait(ms(2000)),
                End,
            ],
            // A naive app starts over whatever Last-Event-ID it is sent.
            vec![
                Stream,
                Chunk("id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n"),
            ],
        ],
    );
    let mut body = s.subscribe().await;
    let text = until(&mut body, "data: c").await;
    assert_eq!(data(&text), ["a", "b", "c"]);
    assert_eq!(s.script.last_ids(), [None, Some("2".to_owned())]);
    assert_eq!(s.route.metrics.repeats_dropped.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_busy_stream_wakes_its_many_subscribers_once_per_window() {
    // 100 subscribers: a tenth of the full 1 s window, whose first step is a quarter of that.
    let s = setup(
        "coalesce = \"1s\"",
        vec![vec![
            Stream,
            Chunk("data: a\n\n"),
            Wait(ms(1)),
            Chunk("data: b\n\n"),
            Wait(ms(1)),
            Chunk("data: c\n\n"),
        ]],
    );
    let joined: Vec<Joined> = (0..100).map(|_| s.join()).collect();
    let readers: Vec<_> = joined
        .into_iter()
        .map(|joined| {
            tokio::spawn(async move {
                let mut body = served(joined).await;
                let mut frames = Vec::new();
                while !frames
                    .iter()
                    .any(|(_, text): &(Instant, String)| text.contains("data: c"))
                {
                    let text = frame(&mut body).await.unwrap();
                    frames.push((Instant::now(), text));
                }
                frames
            })
        })
        .collect();
    for reader in readers {
        let frames = reader.await.unwrap();
        let first = frames.iter().find(|(_, text)| text.contains("data: a")).unwrap();
        let held = frames.iter().find(|(_, text)| text.contains("data: b")).unwrap();
        assert!(
            !first.1.contains("data: b"),
            "the first event goes at once, alone"
        );
        assert!(
            held.1.contains("data: c"),
            "events held together go out in one write: {frames:?}"
        );
        let waited = held.0 - first.0;
        assert!(
            waited >= ms(25) && waited <= ms(26),
            "held for the first window: {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_without_subscribers_retires_after_linger() {
    let s = setup("linger = \"5s\"", vec![vec![Stream]]);
    drop(s.subscribe().await);
    sleep(ms(4900)).await;
    assert_eq!(s.hub.live_streams(), 1, "lingering");
    sleep(ms(200)).await;
    assert_eq!(s.hub.live_streams(), 0, "retired");
    assert_eq!(s.route.metrics.streams.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_joining_within_linger_keeps_the_stream() {
    let s = setup(
        "linger = \"5s\"",
        vec![vec![Stream, Wait(ms(9000)), Chunk("data: late\n\n")]],
    );
    drop(s.subscribe().await);
    sleep(ms(3000)).await;
    let mut body = s.subscribe().await;
    assert_eq!(data(&until(&mut body, "data: late").await), ["late"]);
    assert_eq!(s.hub.live_streams(), 1);
    assert_eq!(s.script.opened().len(), 1, "the same stream, never reopened");
}

#[tokio::test(start_paused = true)]
async fn a_reload_gives_new_settings_and_an_identity_change_ends_the_stream() {
    let s = setup("heartbeat = \"10s\"", vec![vec![Stream]]);
    let mut body = s.subscribe().await;
    frame(&mut body).await.unwrap(); // the prelude
    s.reload("heartbeat = \"1s\"", "http://127.0.0.1:1");
    let reloaded = Instant::now();
    assert_eq!(frame(&mut body).await.as_deref(), Some(":\n"));
    assert_eq!(Instant::now() - reloaded, ms(1000), "the reloaded heartbeat");
    assert_eq!(s.hub.live_streams(), 1);
    s.reload("heartbeat = \"1s\"", "http://127.0.0.1:2");
    assert_eq!(
        frame(&mut body).await,
        None,
        "another upstream: the response ends"
    );
    assert_eq!(s.hub.live_streams(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_definitive_answer_goes_to_its_opener_alone() {
    let s = setup("", vec![vec![Definitive(404)]]);
    let (Joined::Pending(opener), Joined::Pending(other)) = (s.join(), s.join()) else {
        panic!("not joined")
    };
    let limit = Duration::from_secs(5);
    let (opener, other) = tokio::join!(opener.outcome(limit), other.outcome(limit));
    match opener {
        Outcome::Answer(response) => assert_eq!(response.status(), 404),
        other => panic!("the opener got {other:?}"),
    }
    assert!(matches!(other, Outcome::AskUpstream), "{other:?}");
    assert_eq!(s.hub.live_streams(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_task_ends_its_subscribers_and_leaves_the_hub() {
    let s = setup(
        "",
        vec![vec![Stream, Chunk("id: 1\ndata: a\n\n"), Wait(ms(1000)), Panic]],
    );
    // Both wait for the stream's answer, so both get its first event.
    let (one, two) = (s.join(), s.join());
    let (mut one, mut two) = (served(one).await, served(two).await);
    for body in [&mut one, &mut two] {
        until(body, "data: a").await;
    }
    for body in [&mut one, &mut two] {
        assert_eq!(
            frame(body).await,
            None,
            "the response ends, so the client resumes by id"
        );
    }
    assert_eq!(s.hub.live_streams(), 0);
    // The watcher on the task's handle counts the panic once the runtime has reaped the task.
    for _ in 0..100 {
        if s.metrics.stream_task_panics.get() > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(s.metrics.stream_task_panics.get(), 1);
    assert_eq!(s.route.metrics.upstream_streams.get(), 0);
    assert!(s.metrics.encode().contains("ssegate_stream_task_panics_total 1"));
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_every_subscriber_after_what_it_was_sent() {
    let s = setup("", vec![vec![Stream, Chunk("data: a\n\n")]]);
    let mut body = s.subscribe().await;
    until(&mut body, "data: a").await;
    s.hub.shutdown(Duration::ZERO);
    assert_eq!(frame(&mut body).await, None);
    assert_eq!(s.hub.live_streams(), 0);
    assert_eq!(s.route.metrics.upstream_streams.get(), 0);
    assert_eq!(s.metrics.stream_task_panics.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn aged_events_leave_the_buffer_on_time_with_no_periodic_timer() {
    let s = setup(
        "buffer_age = \"2s\"",
        vec![vec![
            Stream,
            Chunk("data: a\n\n"),
            Wait(ms(1000)),
            Chunk("data: b\n\n"),
            Wait(ms(60_000)),
        ]],
    );
    let mut body = s.subscribe().await;
    until(&mut body, "data: b").await;
    // The gauge also counts the request head the stream keeps for reconnects.
    let with_both = s.metrics.buffer_bytes.get();
    // "a" is 2 s old 1 s after "b" came, "b" 1 s later: each leaves within the upkeep's slack.
    sleep(ms(1300)).await;
    let without_a = s.metrics.buffer_bytes.get();
    assert!(without_a < with_both, "a aged out");
    sleep(ms(1000)).await;
    let empty = s.metrics.buffer_bytes.get();
    assert!(empty < without_a, "b aged out");
    // With nothing buffered and the upstream up, nothing is due: the gauge stays.
    sleep(ms(30_000)).await;
    assert_eq!(s.metrics.buffer_bytes.get(), empty);
}
