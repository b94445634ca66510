//! MQTT 5 enhanced authentication through auth_scram, with a SCRAM-SHA-256 client written here
//! (raw MQTT 5 packets, RFC 5802 client steps): success with the server's signature checked,
//! a wrong password refused with 0x87 at the end of the exchange, re-authentication, and an
//! unsupported method refused with 0x8C.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use broker_tests::*;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("key");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn auth_properties(method: &str, data: &[u8]) -> Vec<u8> {
    let mut props = vec![0x15];
    props.extend(mqtt_string(method));
    props.push(0x16);
    props.extend((data.len() as u16).to_be_bytes());
    props.extend_from_slice(data);
    let mut out = var_int(props.len());
    out.extend(props);
    out
}

fn connect_with_auth(client_id: &str, method: &str, data: &[u8]) -> Vec<u8> {
    let mut body = mqtt_string("MQTT");
    body.extend([5, 0x02, 0, 60]);
    body.extend(auth_properties(method, data));
    body.extend(mqtt_string(client_id));
    packet(0x10, &body)
}

fn auth(reason: u8, method: &str, data: &[u8]) -> Vec<u8> {
    let mut body = vec![reason];
    body.extend(auth_properties(method, data));
    packet(0xF0, &body)
}

/// The Authentication Data property (0x16) of a packet whose properties start at `at`.
fn auth_data(body: &[u8], at: usize) -> Vec<u8> {
    let (mut len, mut i, mut shift) = (0usize, at, 0);
    loop {
        len |= ((body[i] & 0x7f) as usize) << shift;
        i += 1;
        if body[i - 1] & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let end = i + len;
    while i < end {
        let id = body[i];
        i += 1;
        match id {
            0x15 | 0x16 | 0x1F => {
                let n = u16::from_be_bytes([body[i], body[i + 1]]) as usize;
                if id == 0x16 {
                    return body[i + 2..i + 2 + n].to_vec();
                }
                i += 2 + n;
            }
            0x11 | 0x27 => i += 4,
            0x21 | 0x22 | 0x13 => i += 2,
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => i += 1,
            0x12 | 0x1A | 0x1C => {
                let n = u16::from_be_bytes([body[i], body[i + 1]]) as usize;
                i += 2 + n;
            }
            _ => panic!("unexpected property {id:#x}"),
        }
    }
    Vec::new()
}

/// The client side of one SCRAM-SHA-256 exchange on `w` (CONNECT already carrying the
/// client-first message, or `reauth` on a connected client). Returns the final packet.
async fn scram(w: &mut Wire, password: &str, client_first_bare: &str, reauth: bool) -> RawPacket {
    let first = w.recv().await.expect("AUTH continue");
    assert_eq!((first.kind(), first.body[0]), (15, 0x18), "AUTH 0x18");
    let server_first = String::from_utf8(auth_data(&first.body, 1)).expect("utf8");
    let field = |k: &str| {
        server_first
            .split(',')
            .find_map(|p| p.strip_prefix(k))
            .expect("attribute")
            .to_owned()
    };
    let (nonce, salt, iterations) = (field("r="), field("s="), field("i="));
    let salt = B64.decode(salt).expect("salt");
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2::<Hmac<Sha256>>(
        password.as_bytes(),
        &salt,
        iterations.parse().expect("iterations"),
        &mut salted,
    )
    .expect("pbkdf2");
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let final_message = format!("{without_proof},p={}", B64.encode(proof));
    w.send(&auth(0x18, "SCRAM-SHA-256", final_message.as_bytes()))
        .await;
    let last = w.recv().await.expect("final packet");
    let success = if reauth {
        last.kind() == 15 && last.body[0] == 0
    } else {
        last.kind() == 2 && last.body[1] == 0
    };
    if success {
        // The server proves it knows the key too.
        let at = if reauth { 1 } else { 2 };
        let v = String::from_utf8(auth_data(&last.body, at)).expect("utf8");
        let server_key = hmac(&salted, b"Server Key");
        let expected = B64.encode(hmac(&server_key, auth_message.as_bytes()));
        assert_eq!(v, format!("v={expected}"), "server signature");
    }
    last
}

#[tokio::test]
async fn scram_sha256_enhanced_authentication() {
    let b = Broker::start();
    b.plugin_config(
        "auth_scram",
        &format!(
            "users_file = {:?}\n",
            b.data_dir().join("scram_users").display().to_string()
        ),
    );
    b.ctl_ok(&["plugins", "load", "auth_scram"]);
    let out = b.ctl_ok(&["scram", "add", "alice", "--password", "pencil"]);
    assert!(out.contains("User alice added"), "{out}");

    // Right password: CONNACK 0 with the server's signature.
    let bare = "n=alice,r=fyko+d2lbbFgONRv9qkxdawL";
    let mut w = Wire::open(b.port()).await;
    w.send(&connect_with_auth(
        "c1",
        "SCRAM-SHA-256",
        format!("n,,{bare}").as_bytes(),
    ))
    .await;
    let ack = scram(&mut w, "pencil", bare, false).await;
    assert_eq!((ack.kind(), ack.body[1]), (2, 0), "CONNACK success");
    assert!(w.ping().await, "connected");

    // Re-authentication on the same connection: AUTH 0x19, then the same two steps.
    let bare2 = "n=alice,r=rOprNGfwEbeRWgbNEkqO";
    w.send(&auth(
        0x19,
        "SCRAM-SHA-256",
        format!("n,,{bare2}").as_bytes(),
    ))
    .await;
    let done = scram(&mut w, "pencil", bare2, true).await;
    assert_eq!((done.kind(), done.body[0]), (15, 0), "AUTH success");
    assert!(w.ping().await, "still connected");

    // Wrong password: 0x87 once the exchange is over.
    let mut bad = Wire::open(b.port()).await;
    bad.send(&connect_with_auth(
        "c2",
        "SCRAM-SHA-256",
        format!("n,,{bare}").as_bytes(),
    ))
    .await;
    let refused = scram(&mut bad, "wrong", bare, false).await;
    assert_eq!((refused.kind(), refused.body[1]), (2, 0x87));

    // An unknown user gets the same exchange, and the same refusal.
    let ghost = "n=ghost,r=abcdef";
    let mut g = Wire::open(b.port()).await;
    g.send(&connect_with_auth(
        "c3",
        "SCRAM-SHA-256",
        format!("n,,{ghost}").as_bytes(),
    ))
    .await;
    let refused = scram(&mut g, "pencil", ghost, false).await;
    assert_eq!((refused.kind(), refused.body[1]), (2, 0x87));

    // A method no plugin handles: 0x8C.
    let mut m = Wire::open(b.port()).await;
    m.send(&connect_with_auth("c4", "SCRAM-SHA-1", b"n,,n=alice,r=x"))
        .await;
    let ack = m.recv().await.expect("CONNACK");
    assert_eq!((ack.kind(), ack.body[1]), (2, 0x8C));

    // Deleted users are refused at once.
    b.ctl_ok(&["scram", "del", "alice"]);
    let mut d = Wire::open(b.port()).await;
    d.send(&connect_with_auth(
        "c5",
        "SCRAM-SHA-256",
        format!("n,,{bare}").as_bytes(),
    ))
    .await;
    let refused = scram(&mut d, "pencil", bare, false).await;
    assert_eq!((refused.kind(), refused.body[1]), (2, 0x87));
    let stored = std::fs::read_to_string(b.data_dir().join("scram_users")).expect("file");
    assert!(!stored.contains("pencil"));
}
