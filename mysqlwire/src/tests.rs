use super::*;

fn packet(sequence: u8, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    write_packets(&mut out, sequence, payload);
    out
}

fn eof(status: u16) -> BytesMut {
    let [low, high] = status.to_le_bytes();
    packet(0, &[0xfe, 0, 0, low, high])
}

fn ok(status: u16) -> BytesMut {
    let mut out = BytesMut::new();
    ok_packet(&mut out, 1, status);
    out
}

/// Feeds packets to a reply; returns what each was and whether it ended.
fn follow(reply: &mut Reply, packets: &[BytesMut]) -> Vec<(String, bool)> {
    packets
        .iter()
        .map(|packet| {
            let kind = match reply.packet(packet).expect("a valid packet") {
                Packet::Data => "data".to_owned(),
                Packet::Ok(ok) => format!("ok {:#x}", ok.status),
                Packet::Eof(status) => format!("eof {status:#x}"),
                Packet::Err(err) => format!("err {}", err.code),
                Packet::LocalInfile => "infile".to_owned(),
                Packet::Prepared {
                    columns,
                    parameters,
                    ..
                } => format!("prepared {columns} {parameters}"),
            };
            (kind, reply.done())
        })
        .collect()
}

#[test]
fn a_packet_is_split_only_when_whole_and_within_the_limit() {
    let mut buffer = packet(3, b"\x03SELECT 1");
    buffer.extend_from_slice(&[0x05, 0x00]);
    let first = split_packet(&mut buffer, 100).unwrap().unwrap();
    assert_eq!(sequence(&first), 3);
    assert_eq!(payload(&first), b"\x03SELECT 1");
    assert_eq!(split_packet(&mut buffer, 100), Ok(None));
    let mut claimed = BytesMut::from(&[0xff, 0xff, 0xff, 0x00][..]);
    assert_eq!(
        split_packet(&mut claimed, 1 << 20),
        Err(WireError::TooLarge {
            length: MAX_PAYLOAD,
            limit: 1 << 20
        })
    );
}

#[test]
fn a_message_of_continuation_packets_is_split_whole() {
    let payload = vec![7u8; MAX_PAYLOAD + 10];
    let mut buffer = packet(0, &payload);
    assert_eq!(buffer.len(), 2 * HEADER + payload.len());
    let whole = buffer.clone();
    let mut cut = BytesMut::from(&whole[..whole.len() - 1]);
    assert_eq!(split_message(&mut cut, usize::MAX), Ok(None));
    let message = split_message(&mut buffer, usize::MAX).unwrap().unwrap();
    assert!(buffer.is_empty());
    assert_eq!(message_payload(&message), payload);
    assert!(matches!(
        split_message(&mut whole.clone(), MAX_PAYLOAD + 9),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn lenenc_integers_round_trip() {
    for value in [
        0,
        250,
        251,
        0xffff,
        0x1_0000,
        0xff_ffff,
        0x100_0000,
        u64::MAX,
    ] {
        let mut out = BytesMut::new();
        put_lenenc(&mut out, value);
        let mut bytes = &out[..];
        assert_eq!(read_lenenc(&mut bytes), Some(value));
        assert!(bytes.is_empty());
    }
    assert_eq!(read_lenenc(&mut &[0xfc, 0x01][..]), None);
}

#[test]
fn an_ok_packet_with_session_state_is_read_and_can_be_told_without_it() {
    // affected 1, insert id 0, status IN_TRANS|STATE_CHANGED, warnings 0,
    // info "x", changes: schema "db", state "1".
    let payload = b"\x00\x01\x00\x01\x40\x00\x00\x01x\x09\x01\x03\x02db\x02\x02\x011";
    let ok = parse_ok(payload, true).unwrap();
    assert_eq!(ok.affected_rows, 1);
    assert_eq!(ok.status, status::IN_TRANS | status::SESSION_STATE_CHANGED);
    assert_eq!(ok.info, b"x");
    assert_eq!(
        state_changes(ok.state_changes).unwrap(),
        vec![StateChange::Schema(b"db"), StateChange::State]
    );
    let plain = ok_without_session_track(&ok, 4);
    assert_eq!(sequence(&plain), 4);
    // The info stays length-encoded (what clients read: mysql_async read a
    // bare "Rows matched: ..." as a length and lost the affected rows).
    assert_eq!(payload_of(&plain), b"\x00\x01\x00\x01\x00\x00\x00\x01x");
    let again = parse_ok(payload_of(&plain), false).unwrap();
    assert_eq!(again.status, status::IN_TRANS);
    assert_eq!(again.info, b"x");
}

fn payload_of(packet: &[u8]) -> &[u8] {
    payload(packet)
}

#[test]
fn an_err_packet_is_read_and_written() {
    let mut out = BytesMut::new();
    err_packet(&mut out, 2, 1045, "28000", "Access denied");
    let err = parse_err(payload(&out)).unwrap();
    assert_eq!(err.code, 1045);
    assert_eq!(err.sql_state, Some(&b"28000"[..]));
    assert_eq!(err.message, b"Access denied");
}

#[test]
fn a_result_set_ends_at_its_second_eof_and_gives_the_status() {
    let mut reply = Reply::to(command::QUERY, true).unwrap();
    let steps = follow(
        &mut reply,
        &[
            packet(1, &[2]),
            packet(2, b"column a"),
            packet(3, b"column b"),
            eof(status::AUTOCOMMIT),
            packet(5, b"\x01a\x01b"),
            // A row whose first column is long: starts with 0xfe, 9+ bytes.
            packet(6, b"\xfe\x00\x00\x00\x00\x00\x00\x00\x00"),
            eof(status::IN_TRANS),
        ],
    );
    let kinds: Vec<_> = steps.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["data", "data", "data", "eof 0x2", "data", "data", "eof 0x1"]
    );
    assert_eq!(
        steps.iter().map(|(_, done)| *done).collect::<Vec<_>>(),
        [false, false, false, false, false, false, true]
    );
}

#[test]
fn more_results_keep_the_reply_open_until_the_last() {
    let mut reply = Reply::to(command::QUERY, false).unwrap();
    let steps = follow(
        &mut reply,
        &[ok(status::MORE_RESULTS_EXISTS), ok(status::AUTOCOMMIT)],
    );
    assert_eq!(steps[0], ("ok 0x8".to_owned(), false));
    assert_eq!(steps[1], ("ok 0x2".to_owned(), true));
}

#[test]
fn an_error_ends_any_reply() {
    let mut err = BytesMut::new();
    err_packet(
        &mut err,
        3,
        1317,
        "70100",
        "Query execution was interrupted",
    );
    let mut reply = Reply::to(command::QUERY, false).unwrap();
    follow(&mut reply, &[packet(1, &[1]), packet(2, b"c"), eof(0)]);
    assert_eq!(follow(&mut reply, &[err]), [("err 1317".to_owned(), true)]);
    assert!(
        reply.packet(&ok(0)).is_err(),
        "nothing follows a done reply"
    );
}

#[test]
fn a_local_infile_request_waits_for_the_file_then_the_status() {
    let mut reply = Reply::to(command::QUERY, false).unwrap();
    assert_eq!(
        follow(&mut reply, &[packet(1, b"\xfb/tmp/file")]),
        [("infile".to_owned(), false)]
    );
    assert!(reply.awaiting_file());
    reply.file_sent();
    assert_eq!(follow(&mut reply, &[ok(0)]), [("ok 0x0".to_owned(), true)]);
}

#[test]
fn a_prepare_reply_counts_its_definitions_and_their_eofs() {
    let prepared = |columns: u16, parameters: u16| {
        let mut payload = vec![0x00, 7, 0, 0, 0];
        payload.extend_from_slice(&columns.to_le_bytes());
        payload.extend_from_slice(&parameters.to_le_bytes());
        payload.extend_from_slice(&[0, 0, 0]);
        packet(1, &payload)
    };
    let mut reply = Reply::to(command::STMT_PREPARE, false).unwrap();
    let steps = follow(
        &mut reply,
        &[
            prepared(1, 2),
            packet(2, b"param"),
            packet(3, b"param"),
            eof(0),
            packet(5, b"column"),
            eof(0),
        ],
    );
    assert_eq!(steps[0], ("prepared 1 2".to_owned(), false));
    assert_eq!(steps[3], ("eof 0x0".to_owned(), false));
    assert_eq!(steps[5], ("eof 0x0".to_owned(), true));

    let mut none = Reply::to(command::STMT_PREPARE, false).unwrap();
    assert_eq!(
        follow(&mut none, &[prepared(0, 0)]),
        [("prepared 0 0".to_owned(), true)]
    );
}

#[test]
fn commands_without_a_reply_have_none() {
    for command in [
        command::QUIT,
        command::STMT_CLOSE,
        command::STMT_SEND_LONG_DATA,
    ] {
        assert!(Reply::to(command, false).is_none());
    }
    let mut ping = Reply::to(command::PING, false).unwrap();
    assert_eq!(follow(&mut ping, &[ok(2)]), [("ok 0x2".to_owned(), true)]);
}

#[test]
fn a_long_row_continues_without_being_read_as_a_packet_of_its_own() {
    let mut reply = Reply::to(command::QUERY, false).unwrap();
    follow(&mut reply, &[packet(1, &[1]), packet(2, b"c"), eof(0)]);
    let long = packet(4, &vec![0xfe; MAX_PAYLOAD + 3]);
    let first = BytesMut::from(&long[..HEADER + MAX_PAYLOAD]);
    let second = BytesMut::from(&long[HEADER + MAX_PAYLOAD..]);
    // The continuation starts with 0xfe and is short: not an EOF.
    assert_eq!(
        follow(&mut reply, &[first, second, eof(0)]),
        [
            ("data".to_owned(), false),
            ("data".to_owned(), false),
            ("eof 0x0".to_owned(), true)
        ]
    );
}

#[test]
fn a_text_row_reads_strings_and_nulls() {
    assert_eq!(
        text_row(b"\x06+05:00\xfb\x00"),
        Some(vec![Some(&b"+05:00"[..]), None, Some(&b""[..])])
    );
    assert_eq!(text_row(b"\x09short"), None);
}

#[test]
fn execute_layout_finds_the_types_after_the_null_bitmap() {
    // id 7, no cursor, one iteration; 9 parameters: a 2-byte bitmap.
    let mut payload = vec![command::STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    payload.extend_from_slice(&[3, 0].repeat(9));
    payload.extend_from_slice(&[1, 0, 0, 0]);
    assert_eq!(statement_id(&payload), Some(7));
    assert_eq!(
        execute_layout(&payload, 9),
        Ok(Some(ExecuteLayout {
            bound_flag: 12,
            types: Some(13..31),
        }))
    );
    // Types bound before: the flag is 0 and the values follow it.
    let unbound = [command::STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1];
    assert_eq!(
        execute_layout(&unbound, 9),
        Ok(Some(ExecuteLayout {
            bound_flag: 12,
            types: None,
        }))
    );
    assert_eq!(execute_layout(&unbound, 0), Ok(None));
    // Cut short, or a flag that is neither.
    assert!(execute_layout(&payload[..20], 9).is_err());
    assert!(execute_layout(&unbound[..11], 9).is_err());
    let mut odd = unbound;
    odd[12] = 2;
    assert!(execute_layout(&odd, 9).is_err());
}
