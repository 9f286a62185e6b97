//! Connection limits as nginx keeps them: idle keep-alive connections make
//! room for new clients at the cap, busy ones are never dropped for that,
//! and clients that stall or never read cannot hold a slot.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use keyferry_tests::process::{
    PATIENCE, Server, has_fields, read_exact, relayed, rustls_client, write_all,
};

fn echo(c: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, text: &[u8]) {
    write_all(c, text);
    assert_eq!(read_exact(c, text.len()), text);
}

#[test]
fn at_the_cap_the_longest_idle_connection_makes_room() {
    let server = Server::start(&[
        "--echo",
        "--max-connections",
        "3",
        "--keepalive-timeout",
        "600",
    ]);
    let mut idle: Vec<_> = (0..3u8)
        .map(|i| {
            let mut c = rustls_client(&server.addr());
            echo(&mut c, &[b'a' + i; 10]);
            c
        })
        .collect();
    // The fourth client is served: the longest-idle connection is closed
    // to make room, not this client left hanging at TCP connect.
    let mut fourth = rustls_client(&server.addr());
    echo(&mut fourth, b"the fourth client");
    server.stderr.wait_for_event(|e| {
        has_fields(
            e,
            &[
                ("message", "connection"),
                ("ending", "shed"),
                ("detail", "closed while idle to admit a client at the cap"),
            ],
        ) && relayed(e)
    });
    // The first connection was the longest idle: close_notify, then EOF.
    let mut buf = [0u8; 16];
    assert_eq!(idle[0].read(&mut buf).expect("a clean close"), 0);
    for c in &mut idle[1..] {
        echo(c, b"still served");
    }
}

#[test]
fn a_connection_in_the_middle_of_a_record_is_never_shed() {
    let server = Server::start(&[
        "--echo",
        "--max-connections",
        "2",
        "--keepalive-timeout",
        "600",
        "--request-timeout",
        "600",
    ]);
    let mut busy = rustls_client(&server.addr());
    echo(&mut busy, b"first");
    let mut idle = rustls_client(&server.addr());
    echo(&mut idle, b"second");
    // `busy` sends half a record, so it is mid-request; `idle` became idle
    // after it.
    busy.conn.writer().write_all(b"half a record").unwrap();
    let mut wire = Vec::new();
    while busy.conn.wants_write() {
        busy.conn.write_tls(&mut wire).unwrap();
    }
    busy.sock.write_all(&wire[..8]).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let mut third = rustls_client(&server.addr());
    echo(&mut third, b"third");
    let mut buf = [0u8; 16];
    assert_eq!(
        idle.read(&mut buf).expect("a clean close"),
        0,
        "the idle one made room"
    );
    busy.sock.write_all(&wire[8..]).unwrap();
    assert_eq!(
        read_exact(&mut busy, 13),
        b"half a record",
        "the busy one carries on"
    );
}

#[test]
fn clients_that_never_read_cannot_hold_their_slots() {
    let server = Server::start(&[
        "--echo",
        "--max-connections",
        "2",
        "--write-timeout",
        "2",
        "--keepalive-timeout",
        "600",
        "--request-timeout",
        "600",
    ]);
    // Two clients pipeline data and never read what is echoed back.
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let mut c = rustls_client(&server.addr());
            echo(&mut c, b"handshake done");
            std::thread::spawn(move || {
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..4096 {
                    if c.write_all(&chunk).and_then(|()| c.flush()).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    // A third client is served once the write timeout frees a slot (it may
    // be turned away while both slots are still stuck, and retries).
    let start = Instant::now();
    loop {
        let served = std::panic::catch_unwind(|| {
            let mut c = rustls_client(&server.addr());
            echo(&mut c, b"third client");
        });
        if served.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the third client was never served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.stderr.wait_for_event(|e| {
        has_fields(
            e,
            &[
                ("message", "connection"),
                ("ending", "write_timeout"),
                ("detail", "peer stopped reading"),
            ],
        ) && relayed(e)
    });
    for w in writers {
        w.join().unwrap();
    }
}
