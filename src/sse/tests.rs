//! Table-driven cases for every parsing rule, and properties over arbitrary input.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

fn parse_chunks(chunks: &[&[u8]], limit: usize) -> Vec<Item> {
    let mut parser = Parser::new(limit);
    let mut items = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, |item| items.push(item));
    }
    parser.finish();
    items
}

fn parse(input: &[u8]) -> Vec<Item> {
    parse_chunks(&[input], 1 << 20)
}

fn ev(event: Option<&str>, data: &str, id: Option<&str>) -> Item {
    Item::Event(Event {
        event: event.map(str::to_owned),
        data: data.to_owned(),
        id: id.map(str::to_owned),
    })
}

fn msg(data: &str) -> Item {
    ev(None, data, None)
}

#[test]
fn parsing_rules() {
    let cases: Vec<(&str, &[u8], Vec<Item>)> = vec![
        ("lf endings", b"data: a\n\n", vec![msg("a")]),
        ("crlf endings", b"data: a\r\n\r\n", vec![msg("a")]),
        ("cr endings", b"data: a\r\r", vec![msg("a")]),
        (
            "mixed endings",
            b"data: a\rdata: b\r\ndata: c\n\r\n",
            vec![msg("a\nb\nc")],
        ),
        ("leading bom ignored", b"\xEF\xBB\xBFdata: a\n\n", vec![msg("a")]),
        (
            "second bom is part of the field name",
            b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n",
            vec![msg("b")],
        ),
        ("comment ignored", b": hello\ndata: a\n: x\n\n", vec![msg("a")]),
        ("field without colon", b"data\n\n", vec![msg("")]),
        ("one leading space stripped", b"data:  two\n\n", vec![msg(" two")]),
        ("no space after colon", b"data:x\n\n", vec![msg("x")]),
        (
            "multi-line data joined by lf",
            b"data: a\ndata: b\n\n",
            vec![msg("a\nb")],
        ),
        (
            "trailing empty data line",
            b"data: a\ndata:\n\n",
            vec![msg("a\n")],
        ),
        (
            "event type",
            b"event: tick\ndata: 1\n\n",
            vec![ev(Some("tick"), "1", None)],
        ),
        (
            "empty event type is message",
            b"event:\ndata: 1\n\n",
            vec![msg("1")],
        ),
        ("id", b"id: 7\ndata: 1\n\n", vec![ev(None, "1", Some("7"))]),
        ("id with nul ignored", b"id: 7\0\ndata: 1\n\n", vec![msg("1")]),
        ("empty id", b"id\ndata: 1\n\n", vec![ev(None, "1", Some(""))]),
        ("retry digits", b"retry: 1500\n", vec![Item::Retry(1500)]),
        ("retry with space inside ignored", b"retry: 15 00\n", vec![]),
        (
            "retry non-digits ignored",
            b"retry: 1.5\nretry: -1\nretry: x\n",
            vec![],
        ),
        ("retry empty ignored", b"retry:\n", vec![]),
        (
            "retry too large ignored",
            b"retry: 99999999999999999999999\n",
            vec![],
        ),
        ("unknown field ignored", b"foo: bar\ndata: a\n\n", vec![msg("a")]),
        ("field names are case sensitive", b"Data: a\n\n", vec![]),
        ("no data, not dispatched", b"event: x\n\n", vec![]),
        ("blank lines alone", b"\n\n\r\n\r", vec![]),
        (
            "unterminated final event discarded",
            b"data: a\n\ndata: b\n",
            vec![msg("a")],
        ),
        ("unterminated final line discarded", b"data: a", vec![]),
        (
            "invalid utf-8 replaced",
            b"data: a\xFFb\n\n",
            vec![msg("a\u{FFFD}b")],
        ),
        (
            "truncated utf-8 before newline",
            b"data: \xE2\x82\n\n",
            vec![msg("\u{FFFD}")],
        ),
        ("colon in value kept", b"data: a:b\n\n", vec![msg("a:b")]),
        (
            "event type resets after dispatch",
            b"event: x\ndata: 1\n\ndata: 2\n\n",
            vec![ev(Some("x"), "1", None), msg("2")],
        ),
        (
            "id belongs to its own block only",
            b"id: 1\ndata: a\n\ndata: b\n\n",
            vec![ev(None, "a", Some("1")), msg("b")],
        ),
    ];
    for (name, input, expected) in cases {
        assert_eq!(
            parse(input),
            expected,
            "case {name:?}, input {:?}",
            String::from_utf8_lossy(input)
        );
        // The same input fed a byte at a time must give the same items.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            parse_chunks(&bytes, 1 << 20),
            expected,
            "case {name:?} fed byte by byte"
        );
    }
}

#[test]
fn crlf_split_across_chunks_is_one_line_ending() {
    let items = parse_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"], 1024);
    assert_eq!(items, vec![msg("a\nb")]);
}

#[test]
fn cr_at_chunk_end_dispatches_without_waiting_for_the_next_chunk() {
    let mut parser = Parser::new(1024);
    let mut items = Vec::new();
    parser.feed(b"data: a\r\r", |item| items.push(item));
    assert_eq!(items, vec![msg("a")]);
    // The LF that may follow belongs to the CR; it is not another blank line.
    parser.feed(b"\ndata: b\n\n", |item| items.push(item));
    assert_eq!(items, vec![msg("a"), msg("b")]);
}

#[test]
fn bom_split_across_chunks() {
    let items = parse_chunks(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"], 1024);
    assert_eq!(items, vec![msg("a")]);
}

#[test]
fn last_event_id_carries_over_as_the_spec_says() {
    let mut parser = Parser::new(1024);
    let mut items = Vec::new();
    parser.feed(b"id: 1\ndata: a\n\ndata: b\n\n", |item| items.push(item));
    assert_eq!(parser.last_event_id(), "1");
    // An id-only block sets it without dispatching anything.
    parser.feed(b"id: 2\n\n", |item| items.push(item));
    assert_eq!(parser.last_event_id(), "2");
    // An empty id resets it.
    parser.feed(b"id\ndata: c\n\n", |item| items.push(item));
    assert_eq!(parser.last_event_id(), "");
    // An id inside an unfinished block does not count.
    parser.feed(b"id: 9\ndata: d\n", |item| items.push(item));
    parser.finish();
    assert_eq!(parser.last_event_id(), "");
    assert_eq!(items.len(), 3);
}

#[test]
fn oversize_event_is_dropped_and_parsing_resynchronises() {
    let big = format!("data: {}\n\n", "x".repeat(100));
    let input = format!("data: small\n\n{big}data: after\n\n");
    let items = parse_chunks(&[input.as_bytes()], 64);
    assert_eq!(items[0], msg("small"));
    assert_eq!(items[1], Item::Dropped);
    assert_eq!(items[2], msg("after"));
    assert_eq!(items.len(), 3);
}

#[test]
fn oversize_event_made_of_many_small_lines_is_dropped() {
    let mut input = String::new();
    for _ in 0..20 {
        input.push_str("data: 0123456789\n");
    }
    input.push_str("\ndata: ok\n\n");
    let mut parser = Parser::new(100);
    let mut items = Vec::new();
    for chunk in input.as_bytes().chunks(7) {
        parser.feed(chunk, |item| items.push(item));
    }
    assert!(items[0] == Item::Dropped, "{items:?}");
    assert_eq!(items[1], msg("ok"));
    assert_eq!(parser.dropped_events(), 1);
}

// Found by fuzzing: 40 invalid bytes in a 60-byte line decode to 120 bytes of U+FFFD, so an
// event within the limit on the wire was delivered over it.
#[test]
fn the_limit_holds_for_the_event_as_decoded() {
    let mut input = b"data: ".to_vec();
    input.extend_from_slice(&[0x9f; 40]);
    input.extend_from_slice(b"\n\ndata: ok\n\n");
    let items = parse_chunks(&[&input], 64);
    assert_eq!(items, vec![Item::Dropped, msg("ok")]);
    let mut input = b"data: ".to_vec();
    input.extend_from_slice(&[0x9f; 19]);
    input.extend_from_slice(b"\n\n");
    let items = parse_chunks(&[&input], 64);
    assert_eq!(
        items,
        vec![msg(&"\u{fffd}".repeat(19))],
        "57 bytes decoded: within"
    );
}

#[test]
fn endless_line_is_never_buffered_whole() {
    let mut parser = Parser::new(1000);
    let mut items = Vec::new();
    parser.feed(b"data: ", |item| items.push(item));
    for _ in 0..10_000 {
        parser.feed(&[b'x'; 1000], |item| items.push(item));
    }
    let kept = parser.buffered_capacity();
    assert!(kept <= 4096, "kept {kept} bytes");
    parser.feed(b"\n\ndata: next\n\n", |item| items.push(item));
    assert!(items[0] == Item::Dropped);
    assert_eq!(items[1], msg("next"));
}

#[test]
fn long_comment_is_dropped_without_costing_an_event() {
    let input = format!("data: a\n:{}\ndata: b\n\n", " ".repeat(500));
    let items = parse_chunks(&[&input.as_bytes()[..100], &input.as_bytes()[100..]], 64);
    assert_eq!(items, vec![msg("a\nb")]);
}

fn encoded(event: &Event) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_event(event, None, &mut out);
    out.to_vec()
}

#[test]
fn encoder_writes_canonical_lines() {
    let event = Event {
        event: Some("tick".into()),
        data: "a\nb\r\nc\rd".into(),
        id: Some("1-2".into()),
    };
    assert_eq!(
        encoded(&event),
        b"id: 1-2\nevent: tick\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    );
    assert_eq!(encoded(&Event::message("")), b"data: \n\n");
    let mut out = BytesMut::new();
    encode_retry(3000, &mut out);
    encode_comment("", &mut out);
    encode_comment("hb\nid: 666", &mut out);
    assert_eq!(&out[..], b"retry: 3000\n:\n: hbid: 666\n");
}

#[test]
fn encoder_cannot_be_made_to_inject_fields() {
    let event = Event {
        event: Some("x\n\ndata: injected".into()),
        data: "ok".into(),
        id: Some("1\r\nretry: 1\0".into()),
    };
    let items = parse(&encoded(&event));
    assert_eq!(items, vec![ev(Some("xdata: injected"), "ok", Some("1retry: 1"))]);
}

#[test]
fn encoder_id_override() {
    let mut out = BytesMut::new();
    encode_event(&Event::message("a"), Some("e-1"), &mut out);
    assert_eq!(&out[..], b"id: e-1\ndata: a\n\n");
}

/// Events as the parser can produce them: no CR in data, no CR, LF or NUL in ids, no CR or LF
/// in types, and a non-empty type (an empty one means "message").
fn parsed_event() -> impl Strategy<Value = Event> {
    (
        proptest::option::of("[^\r\n]{1,12}"),
        "[^\r]{0,40}",
        proptest::option::of("[^\r\n\0]{0,12}"),
    )
        .prop_map(|(event, data, id)| Event { event, data, id })
}

proptest! {
    #[test]
    fn every_split_gives_the_same_items(input in proptest::collection::vec(
        prop_oneof![
            Just(b"data: x".to_vec()), Just(b"\n".to_vec()), Just(b"\r".to_vec()),
            Just(b"\r\n".to_vec()), Just(b"id: 1".to_vec()), Just(b"event: e".to_vec()),
            Just(b":c".to_vec()), Just(b"retry: 5".to_vec()), Just(b"\xEF\xBB\xBF".to_vec()),
            Just(b"\xE2\x82\xAC".to_vec()), Just(b"\xFF".to_vec()), Just(b"data".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ],
        0..24,
    ).prop_map(|parts| parts.concat())) {
        let whole = parse_chunks(&[&input], 24);
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            prop_assert_eq!(&parse_chunks(&[a, b], 24), &whole, "split at {}", split);
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&parse_chunks(&bytes, 24), &whole);
    }

    #[test]
    fn encode_then_parse_is_identity(events in proptest::collection::vec(parsed_event(), 0..8)) {
        let mut wire = BytesMut::new();
        for event in &events {
            encode_event(event, None, &mut wire);
        }
        let expected: Vec<Item> = events.into_iter().map(Item::Event).collect();
        for split in 0..=wire.len() {
            let (a, b) = wire.split_at(split);
            prop_assert_eq!(&parse_chunks(&[a, b], 1 << 20), &expected);
        }
    }
}
