//! Keypairs through the real router and store: import, create (private key answered once),
//! refusal of what is not an SSH public key, per-project visibility.

mod common;

use axum::http::StatusCode;
use common::{call, error, fixture};
use nimbus_api::{CreatedKeypair, ErrorCode, KeypairView};

const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9VxbVRzOThOJ0ksbEfE2zQfNSnGbdBGrGTlN2M1R8l laptop";

#[tokio::test]
async fn keypairs_are_imported_or_created_and_bad_keys_refused() {
    let f = fixture().await;
    let t = Some(f.token.as_str());
    let body = serde_json::json!({"name": "laptop", "public_key": format!("{ED25519}\n")});
    let (s, b) = call(&f, "POST", "/v1/keypairs", t, Some(&body.to_string())).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let created: CreatedKeypair = serde_json::from_str(&b).expect("created");
    assert_eq!(created.private_key, None, "an import has no private key");
    assert_eq!(created.keypair.public_key, ED25519);
    assert!(created.keypair.fingerprint.starts_with("SHA256:"));

    for bad in [
        "not a key",
        "ssh-ed25519 AAAA!!!!",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9VxbVRzOThOJ0ksbEfE2zQfNSnGbdBGrGTlN2M1R8l\nssh-rsa AAAA",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
    ] {
        let body = serde_json::json!({"name": "bad", "public_key": bad});
        let (s, b) = call(&f, "POST", "/v1/keypairs", t, Some(&body.to_string())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        assert_eq!(error(&b).code, ErrorCode::BadRequest);
    }
    let (s, _) = call(&f, "POST", "/v1/keypairs", t, Some(&body.to_string())).await;
    assert_eq!(s, StatusCode::CONFLICT, "the name is taken");

    let (s, b) = call(&f, "POST", "/v1/keypairs", t, Some(r#"{"name":"ci"}"#)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let ci: CreatedKeypair = serde_json::from_str(&b).expect("created");
    let pem = ci.private_key.expect("the private key, once");
    let private = ssh_key::PrivateKey::from_openssh(&pem).expect("an OpenSSH private key");
    assert_eq!(
        private.public_key().to_openssh().expect("encode"),
        ci.keypair.public_key
    );
    let (_, b) = call(&f, "GET", "/v1/keypairs/ci", t, None).await;
    assert!(!b.contains("PRIVATE"), "never stored or shown again: {b}");

    let (_, b) = call(&f, "GET", "/v1/keypairs", t, None).await;
    let names: Vec<String> = serde_json::from_str::<Vec<KeypairView>>(&b)
        .expect("list")
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["ci", "laptop"]);
    let (s, _) = call(&f, "POST", "/v1/projects", t, Some(r#"{"name":"acme"}"#)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = call(&f, "GET", "/v1/keypairs/ci?project=acme", t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "keypairs belong to their project");
    let (s, _) = call(&f, "DELETE", "/v1/keypairs/ci", t, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&f, "GET", "/v1/keypairs/ci", t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// What a create with a key and user-data is refused for, before any capacity is sought (the
/// fixture has no host: a create that passes these checks is refused for capacity).
#[tokio::test]
async fn creates_check_the_key_and_the_user_data() {
    use base64::Engine as _;
    let f = fixture().await;
    let t = Some(f.token.as_str());
    let mut disk = vec![0u8; 1 << 20];
    disk[510] = 0x55;
    disk[511] = 0xaa;
    let (s, b) = common::upload(&f, "/v1/images/deb/upload", &f.token, &disk).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let body = serde_json::json!({"name": "laptop", "public_key": ED25519});
    let (s, _) = call(&f, "POST", "/v1/keypairs", t, Some(&body.to_string())).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = call(
        &f,
        "POST",
        "/v1/images",
        t,
        Some(r#"{"name":"bypath","kernel":"/bin/sh"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![b'#'; n]);
    let cases = [
        (
            serde_json::json!({"image": "deb", "key_name": "nope"}),
            ErrorCode::NotFound,
            "keypair \"nope\" not found",
        ),
        (
            serde_json::json!({"image": "deb", "user_data": b64(16 * 1024 + 1)}),
            ErrorCode::BadRequest,
            "16 KiB",
        ),
        (
            serde_json::json!({"image": "deb", "user_data": "%%%"}),
            ErrorCode::BadRequest,
            "not base64",
        ),
        (
            serde_json::json!({"image": "bypath", "key_name": "laptop"}),
            ErrorCode::BadRequest,
            "registered by path",
        ),
        (
            serde_json::json!({"image": "deb", "key_name": "laptop", "user_data": b64(16 * 1024)}),
            ErrorCode::NoCapacity,
            "no host",
        ),
    ];
    for (extra, code, says) in cases {
        let mut body = serde_json::json!({"name": "vm1", "flavor": "tiny"});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (_, b) = call(&f, "POST", "/v1/instances", t, Some(&body.to_string())).await;
        let e = error(&b);
        assert_eq!(e.code, code, "{body}: {b}");
        assert!(e.message.contains(says), "{body}: {b}");
    }
}
