//! The replay an app may send after ssegate reopened its stream with `Last-Event-ID`: events
//! it had sent before, from somewhere before that id (some apps honour it, some start again at
//! their beginning). Those are dropped as repeats; nothing else is.

use std::collections::HashSet;

/// The replay an app may send after ssegate reopened its stream with Last-Event-ID: events it
/// had sent before, from somewhere before that id (some apps start at their beginning).
pub(crate) struct Replay {
    /// The Last-Event-ID sent: once it has gone by, what follows is new.
    resume_id: String,
    /// The app ids buffered when the stream was reopened: only those are repeats (an app may
    /// repeat an id within one connection), even once a replayed event evicts them.
    known: HashSet<Box<str>>,
    /// A buffered id has come: an id that is not buffered after it is a new event.
    seen_known: bool,
}

impl Replay {
    /// A replay after reopening with `resume_id`, judged against the app ids buffered then.
    pub(crate) fn new<'a>(resume_id: &str, buffered: impl Iterator<Item = &'a str>) -> Replay {
        Replay {
            resume_id: resume_id.to_owned(),
            known: buffered.map(Box::from).collect(),
            seen_known: false,
        }
    }

    /// Whether the event with `id` is a repeat to drop; ends the replay when it meets new
    /// events (`self` is then to be dropped: the second value).
    pub(crate) fn check(&mut self, id: Option<&str>) -> (bool, bool) {
        match id {
            Some(id) if self.known.contains(id) => {
                let last = id == self.resume_id;
                self.seen_known = true;
                (true, last)
            }
            // Not buffered, before any buffered one: an old event already evicted, or a new
            // one; it is delivered, and the replay may go on.
            Some(_) if !self.seen_known => (false, false),
            // New after old, or an event without id: the replay is over.
            _ => (false, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ids<'a> = &'a [Option<&'a str>];

    /// What a replay after reopening with `resume` (buffered: `known`) drops of `ids`.
    fn dropped<'a>(resume: &str, known: &[&str], ids: &[Option<&'a str>]) -> Vec<Option<&'a str>> {
        let mut replay = Some(Replay::new(resume, known.iter().copied()));
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = replay.as_mut() {
                let (repeat, over) = r.check(*id);
                if over {
                    replay = None;
                }
                if repeat {
                    out.push(*id);
                }
            }
        }
        out
    }

    #[test]
    fn repeats_are_dropped_until_the_replay_meets_new_events() {
        let buffered = ["b", "c", "d"];
        let cases: &[(&str, Ids<'_>, Ids<'_>)] = &[
            ("an app that honours Last-Event-ID", &[Some("e"), Some("f")], &[]),
            (
                "a replay from a little before",
                &[Some("c"), Some("d"), Some("e")],
                &[Some("c"), Some("d")],
            ),
            (
                "a replay from the app's beginning, older than the buffer",
                &[Some("a"), Some("b"), Some("c"), Some("d"), Some("e")],
                &[Some("b"), Some("c"), Some("d")],
            ),
            (
                "the resume id passed: what follows is new, even a known id",
                &[Some("d"), Some("c")],
                &[Some("d")],
            ),
            (
                "new after old ends it",
                &[Some("b"), Some("x"), Some("c")],
                &[Some("b")],
            ),
            ("an event without id ends it", &[None, Some("c")], &[]),
            (
                "an id repeated within the connection is the app's",
                &[Some("e"), Some("e")],
                &[],
            ),
        ];
        for (name, ids, expected) in cases {
            assert_eq!(dropped("d", &buffered, ids), *expected, "{name}");
        }
    }
}
