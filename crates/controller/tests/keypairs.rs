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
