//! One dispatched event.

/// An event as the event-stream format defines it, after parsing.
///
/// `id` is `Some` only when the event's own block carried an `id:` field; the id that a browser
/// would report as `lastEventId` (which carries over from earlier events) is
/// [`Parser::last_event_id`](super::Parser::last_event_id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field: the event type. `None` means the default type, `message`.
    pub event: Option<String>,
    /// The `data:` lines joined by LF, without the final LF.
    pub data: String,
    /// The `id:` field of this event's block, if it had one. Never contains NUL, CR or LF.
    pub id: Option<String>,
}

impl Event {
    /// An event of the default type with `data` and no id.
    pub fn message(data: impl Into<String>) -> Self {
        Event {
            data: data.into(),
            ..Event::default()
        }
    }
}
