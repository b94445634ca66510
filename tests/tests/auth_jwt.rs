//! auth_jwt against the real broker: tokens signed here (jsonwebtoken) with an HMAC secret, an
//! EC key (PEM) and a JWKS served by a real HTTP server; raw MQTT 5 packets for exact reason
//! codes, including the DISCONNECT 0xA0 when a token expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use broker_tests::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hs256(secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn publish(topic: &str, id: u16) -> Vec<u8> {
    let mut body = mqtt_string(topic);
    body.extend(id.to_be_bytes());
    body.extend([0x00, b'p']);
    packet(0x32, &body)
}

fn reason(p: RawPacket) -> u8 {
    p.body.get(2).copied().unwrap_or(0)
}

#[tokio::test]
async fn hmac_tokens_acl_claims_and_expiry() {
    let b = Broker::start();
    b.plugin_config("auth_jwt", "secret = \"s3cret\"\nleeway_secs = 0\n");
    b.ctl_ok(&["plugins", "load", "auth_jwt"]);

    // A valid token whose claims allow only the client's own subtree, expiring in 3 s.
    let exp = now() + 3;
    let token = hs256(
        "s3cret",
        &json!({"sub": "c1", "exp": exp, "acl": {"pub": ["devices/%c/#"], "sub": ["devices/%c/#"]}}),
    );
    let (mut w, code) = connect_v5_as(b.port(), "c1", "u", &token).await;
    assert_eq!(code, 0, "valid token");
    w.send(&publish("devices/c1/temp", 1)).await;
    assert_ne!(reason(w.recv().await.expect("PUBACK")), 0x87, "own subtree");
    w.send(&publish("elsewhere/x", 2)).await;
    assert_eq!(
        reason(w.recv().await.expect("PUBACK")),
        0x87,
        "not in the claims"
    );
    w.send(&subscribe_packet(5, 3, "elsewhere/#", 1)).await;
    assert_eq!(w.recv().await.expect("SUBACK").body[3], 0x87);
    w.send(&subscribe_packet(5, 4, "devices/c1/+", 1)).await;
    assert_eq!(w.recv().await.expect("SUBACK").body[3], 1);

    // Refused: tampered, expired, wrong secret; a password that is not a JWT is left to the
    // next plugin (none here: auth.no_match denies, 0x87).
    let mut tampered = token.clone();
    let last = tampered.pop().expect("char");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(connect_v5_as(b.port(), "t", "u", &tampered).await.1, 0x86);
    let expired = hs256("s3cret", &json!({"exp": now() - 60}));
    assert_eq!(connect_v5_as(b.port(), "e", "u", &expired).await.1, 0x86);
    let foreign = hs256("other", &json!({"exp": now() + 60}));
    assert_eq!(connect_v5_as(b.port(), "f", "u", &foreign).await.1, 0x86);
    assert_eq!(
        connect_v5_as(b.port(), "p", "u", "plain password").await.1,
        0x87
    );
    let future = hs256("s3cret", &json!({"nbf": now() + 600}));
    assert_eq!(connect_v5_as(b.port(), "n", "u", &future).await.1, 0x86);

    // The connection is closed when the token expires: DISCONNECT 0xA0.
    let disconnect = w
        .recv_within(Duration::from_secs(8))
        .await
        .expect("DISCONNECT at expiry");
    assert_eq!(
        (disconnect.kind(), disconnect.body.first().copied()),
        (14, Some(0xA0)),
        "maximum connect time"
    );
    wait_until("the expiry logged", || b.log().contains("token expired")).await;
}

// Multi-threaded: the JWKS server must answer while brokerctl blocks this test's thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec_keys_from_a_pem_file_and_a_jwks_url() {
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("EC key");
    let b = Broker::start();
    let pem = b.data_dir().parent().expect("dir").join("jwt.pem");
    std::fs::write(&pem, key.public_key_pem()).expect("write pem");
    b.plugin_config(
        "auth_jwt",
        &format!("public_key_file = {:?}\n", pem.display().to_string()),
    );
    b.ctl_ok(&["plugins", "load", "auth_jwt"]);
    let sign = |kid: Option<&str>, claims: Value| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_owned);
        encode(&h, &claims, &signing).expect("sign ES256")
    };
    let token = sign(None, json!({"exp": now() + 60, "is_superuser": true}));
    assert_eq!(connect_v5_as(b.port(), "ec", "u", &token).await.1, 0);
    let hmac = hs256("whatever", &json!({"exp": now() + 60}));
    assert_eq!(
        connect_v5_as(b.port(), "hs", "u", &hmac).await.1,
        0x86,
        "HS256 is not allowed with an EC key"
    );

    // The same key published as a JWKS by a real HTTP server.
    let raw = key.public_key_raw();
    assert_eq!(raw.len(), 65, "uncompressed P-256 point");
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
    }]})
    .to_string();
    let server = http::HttpServer::start(move |_| (200, jwks.clone(), 0)).await;
    b.plugin_config(
        "auth_jwt",
        &format!(
            "jwks_url = \"http://127.0.0.1:{}/jwks.json\"\n",
            server.port
        ),
    );
    b.ctl_ok(&["plugins", "reload", "auth_jwt"]);
    assert_eq!(server.seen().len(), 1, "fetched at load");
    let with_kid = sign(Some("k1"), json!({"exp": now() + 60}));
    assert_eq!(connect_v5_as(b.port(), "jwks", "u", &with_kid).await.1, 0);
    let unknown = sign(Some("k2"), json!({"exp": now() + 60}));
    assert_eq!(connect_v5_as(b.port(), "k2", "u", &unknown).await.1, 0x86);

    // A JWKS URL that does not answer refuses the load, with the reason.
    b.plugin_config("auth_jwt", "jwks_url = \"http://127.0.0.1:9/none\"\n");
    let refused = b.ctl(&["plugins", "reload", "auth_jwt"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("cannot fetch"), "{refused:?}");
}

/// auth_jwt and auth_file in one chain: tokens and passwords on the same broker, each plugin
/// ignoring what is not its own.
#[tokio::test]
async fn tokens_and_password_files_side_by_side() {
    let b = Broker::start();
    b.plugin_config("auth_jwt", "secret = \"k\"\n");
    b.plugin_config(
        "auth_file",
        &format!(
            "users = [{{ name = \"alice\", password = \"pw\" }}]\npassword_file = {:?}\n",
            b.data_dir().join("passwd").display().to_string()
        ),
    );
    b.ctl_ok(&["plugins", "load", "auth_jwt"]);
    b.ctl_ok(&["plugins", "load", "auth_file"]);
    let token = hs256("k", &json!({"exp": now() + 60}));
    assert_eq!(
        connect_v5_as(b.port(), "t", "device", &token).await.1,
        0,
        "token"
    );
    assert_eq!(
        connect_v5_as(b.port(), "p", "alice", "pw").await.1,
        0,
        "password"
    );
    assert_eq!(connect_v5_as(b.port(), "w", "alice", "nope").await.1, 0x86);
    assert_eq!(
        connect_v5_as(b.port(), "u", "stranger", "x").await.1,
        0x87,
        "nobody's"
    );
}
