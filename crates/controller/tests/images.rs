//! Image uploads through the real router and a real SQLite store (no agent needed): the
//! stream is hashed and checked, the format inspected, the bytes stored by digest; every
//! refusal keeps nothing (no row, no file, no quota used).

mod common;

use axum::body::Body;
use axum::http::StatusCode;
use common::{call, error, fixture, upload, upload_stream, Fixture};
use nimbus_api::{CreatedToken, ErrorCode, ImageView, QuotaView};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// A raw disk: `mib` MiB with an MBR boot signature.
fn raw_disk(mib: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..mib << 20).map(|i| (i % 253) as u8).collect();
    d[510] = 0x55;
    d[511] = 0xaa;
    d
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn qcow2(dir: &Path, name: &str, extra: &[&str]) -> Vec<u8> {
    let p = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(extra);
    let path = p.to_str().expect("utf-8");
    args.extend_from_slice(&[path, "1G"]);
    let out = std::process::Command::new("qemu-img")
        .args(&args)
        .output()
        .expect("qemu-img (scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "{out:?}");
    std::fs::read(&p).expect("read")
}

/// Files under the controller's image store (`sub`: `sha256` or `incoming`).
fn stored(f: &Fixture, sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(f.dir.path().join("images").join(sub))
        .expect("image dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

async fn token(f: &Fixture, project: &str, role: &str) -> String {
    let uri = format!("/v1/tokens?project={project}");
    let body = format!(r#"{{"role":"{role}"}}"#);
    let (s, b) = call(f, "POST", &uri, Some(&f.token), Some(&body)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    serde_json::from_str::<CreatedToken>(&b)
        .expect("token")
        .secret
}

async fn project(f: &Fixture, name: &str) {
    let body = format!(r#"{{"name":"{name}"}}"#);
    let (s, b) = call(f, "POST", "/v1/projects", Some(&f.token), Some(&body)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

fn refused(s: StatusCode, b: &str, code: ErrorCode, says: &str) {
    assert_eq!(error(b).code, code, "{s} {b}");
    assert!(error(b).message.contains(says), "{b}");
}

#[tokio::test]
async fn a_raw_upload_is_hashed_inspected_and_stored_by_digest() {
    let f = fixture().await;
    let disk = raw_disk(3);
    let digest = sha256(&disk);
    let uri = format!("/v1/images/disk1/upload?sha256=sha256:{digest}");
    let (s, b) = upload(&f, &uri, &f.token, &disk).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let img: ImageView = serde_json::from_str(&b).expect("image");
    assert_eq!(
        img.digest.as_deref(),
        Some(format!("sha256:{digest}").as_str())
    );
    assert_eq!(img.format.as_deref(), Some("raw"));
    assert_eq!(img.virtual_size_bytes, Some(3 << 20));
    assert_eq!((img.size_bytes, img.public), (3 << 20, false));
    let blobs = stored(&f, "sha256");
    assert_eq!(blobs, [f.dir.path().join("images/sha256").join(&digest)]);
    assert_eq!(std::fs::read(&blobs[0]).expect("blob"), disk);
    // The same bytes under another name share the file; it goes with the last image.
    let (s, b) = upload(&f, "/v1/images/disk2/upload", &f.token, &disk).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(stored(&f, "sha256").len(), 1);
    let (s, _) = call(&f, "DELETE", "/v1/images/disk1", Some(&f.token), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(stored(&f, "sha256").len(), 1, "disk2 still needs the bytes");
    let (s, _) = call(&f, "DELETE", "/v1/images/disk2", Some(&f.token), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(stored(&f, "sha256").is_empty());
}

#[tokio::test]
async fn a_qcow2_is_accepted_and_one_with_a_backing_host_file_is_refused() {
    let f = fixture().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = qcow2(dir.path(), "plain.qcow2", &[]);
    let (s, b) = upload(&f, "/v1/images/q/upload", &f.token, &plain).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let img: ImageView = serde_json::from_str(&b).expect("image");
    assert_eq!(img.format.as_deref(), Some("qcow2"));
    assert_eq!(img.virtual_size_bytes, Some(1 << 30));

    let evil = qcow2(
        dir.path(),
        "evil.qcow2",
        &["-b", "/etc/shadow", "-F", "raw", "-u"],
    );
    let (s, b) = upload(&f, "/v1/images/evil/upload", &f.token, &evil).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    refused(s, &b, ErrorCode::BadRequest, "backing file");
    let data = dir.path().join("d.raw");
    let opt = format!("data_file={}", data.display());
    let evil = qcow2(dir.path(), "data.qcow2", &["-o", &opt]);
    let (s, b) = upload(&f, "/v1/images/evil/upload", &f.token, &evil).await;
    refused(s, &b, ErrorCode::BadRequest, "external data file");
    let text = b"#cloud-config\npackages: [nginx]\n".repeat(64);
    let (s, b) = upload(&f, "/v1/images/evil/upload", &f.token, &text).await;
    refused(s, &b, ErrorCode::BadRequest, "not a disk image");
    let (s, _) = call(&f, "GET", "/v1/images/evil", Some(&f.token), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        stored(&f, "sha256").len(),
        1,
        "only the plain qcow2 is kept"
    );
    assert!(stored(&f, "incoming").is_empty());
}

#[tokio::test]
async fn a_digest_mismatch_or_a_cut_off_upload_keeps_nothing() {
    let f = fixture().await;
    let disk = raw_disk(2);
    let wrong = sha256(b"something else");
    let uri = format!("/v1/images/x/upload?sha256={wrong}");
    let (s, b) = upload(&f, &uri, &f.token, &disk).await;
    refused(s, &b, ErrorCode::BadRequest, "digest mismatch");
    let (s, b) = upload(&f, "/v1/images/x/upload?sha256=zz", &f.token, &disk).await;
    refused(s, &b, ErrorCode::BadRequest, "not a sha256 digest");

    // The client dies half way: the body stream ends in an error.
    let half = disk[..1 << 20].to_vec();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "peer gone",
        )),
    ];
    let body = Body::from_stream(futures::stream::iter(chunks));
    let (s, b) = upload_stream(&f, "/v1/images/x/upload", &f.token, 2 << 20, body).await;
    refused(s, &b, ErrorCode::BadRequest, "nothing was kept");
    // A body shorter or longer than its Content-Length.
    let body = Body::from(disk[..1000].to_vec());
    let (s, b) = upload_stream(&f, "/v1/images/x/upload", &f.token, 2 << 20, body).await;
    refused(s, &b, ErrorCode::BadRequest, "cut off after 1000");
    let body = Body::from(disk.clone());
    let (s, b) = upload_stream(&f, "/v1/images/x/upload", &f.token, 1 << 20, body).await;
    refused(s, &b, ErrorCode::BadRequest, "more than");

    let (s, b) = call(&f, "GET", "/v1/images", Some(&f.token), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, "[]");
    assert!(stored(&f, "sha256").is_empty());
    assert!(stored(&f, "incoming").is_empty(), "space released");
    let (s, _) = upload(&f, "/v1/images/x/upload", &f.token, &disk).await;
    assert_eq!(s, StatusCode::CREATED, "the name is free again");
}

#[tokio::test]
async fn images_are_private_to_their_project_public_ones_are_the_admins() {
    let f = fixture().await;
    project(&f, "acme").await;
    project(&f, "beta").await;
    let acme = token(&f, "acme", "member").await;
    let beta = token(&f, "beta", "member").await;
    let reader = token(&f, "acme", "reader").await;
    let disk = raw_disk(1);
    let (s, b) = upload(&f, "/v1/images/mine/upload", &acme, &disk).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = call(&f, "GET", "/v1/images/mine", Some(&beta), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "beta cannot see acme's image");
    let (s, _) = call(&f, "DELETE", "/v1/images/mine", Some(&beta), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = upload(&f, "/v1/images/pub/upload?public=true", &acme, &disk).await;
    refused(s, &b, ErrorCode::Forbidden, "only an admin");
    let (s, b) = upload(&f, "/v1/images/r/upload", &reader, &disk).await;
    refused(s, &b, ErrorCode::Forbidden, "reader");
    let (s, b) = upload(&f, "/v1/images/pub/upload?public=true", &f.token, &disk).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = call(&f, "GET", "/v1/images", Some(&beta), None).await;
    assert_eq!(s, StatusCode::OK);
    let seen: Vec<ImageView> = serde_json::from_str(&b).expect("list");
    let names: Vec<&str> = seen.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["pub"]);
    let (s, b) = call(&f, "DELETE", "/v1/images/pub", Some(&beta), None).await;
    refused(s, &b, ErrorCode::Forbidden, "belongs to project default");
    // Names are per project: acme's private `mine` neither blocks beta's nor shows in the
    // answer; a second `mine` in beta names beta only.
    let (s, b) = upload(&f, "/v1/images/mine/upload", &beta, &disk).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = upload(&f, "/v1/images/mine/upload", &beta, &disk).await;
    refused(s, &b, ErrorCode::Conflict, "already exists in project beta");
    assert!(!b.contains("acme"), "{b}");
    let owner = |b: &str| serde_json::from_str::<ImageView>(b).expect("image").project;
    let (_, b) = call(&f, "GET", "/v1/images/mine", Some(&acme), None).await;
    assert_eq!(owner(&b), "acme");
    let (_, b) = call(&f, "GET", "/v1/images/mine", Some(&beta), None).await;
    assert_eq!(owner(&b), "beta");
    // An admin acting in a project resolves the name as that project does.
    let (_, b) = call(
        &f,
        "GET",
        "/v1/images/mine?project=acme",
        Some(&f.token),
        None,
    )
    .await;
    assert_eq!(owner(&b), "acme");
    // A project's own image wins over a public one of that name, for that project only.
    let (s, b) = upload(&f, "/v1/images/pub/upload", &beta, &disk).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (_, b) = call(&f, "GET", "/v1/images/pub", Some(&beta), None).await;
    assert_eq!(owner(&b), "beta");
    let (_, b) = call(&f, "GET", "/v1/images/pub", Some(&acme), None).await;
    assert_eq!(owner(&b), "default");
    // Deleting by name deletes the project's own: beta's, then acme's, each left alone.
    let (s, _) = call(&f, "DELETE", "/v1/images/mine", Some(&beta), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = call(&f, "GET", "/v1/images/mine", Some(&acme), None).await;
    assert_eq!((s, owner(&b)), (StatusCode::OK, "acme".to_string()));
    let (s, _) = call(&f, "DELETE", "/v1/images/pub", Some(&beta), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, b) = call(&f, "GET", "/v1/images/pub", Some(&beta), None).await;
    assert_eq!(owner(&b), "default", "beta sees the public one again");
}

#[tokio::test]
async fn the_image_quota_refuses_an_upload_before_and_after_its_bytes() {
    let f = fixture().await;
    project(&f, "acme").await;
    let acme = token(&f, "acme", "member").await;
    let (s, b) = call(
        &f,
        "PUT",
        "/v1/projects/acme/quota",
        Some(&f.token),
        Some(r#"{"image_mib": 3}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = upload(&f, "/v1/images/a/upload", &acme, &raw_disk(2)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = upload(&f, "/v1/images/b/upload", &acme, &raw_disk(2)).await;
    refused(s, &b, ErrorCode::QuotaExceeded, "image_mib quota 3");
    let (_, b) = call(&f, "GET", "/v1/projects/acme/quota", Some(&f.token), None).await;
    let q: QuotaView = serde_json::from_str(&b).expect("quota");
    assert_eq!((q.limits.image_mib, q.usage.image_mib), (Some(3), 2));
    assert!(stored(&f, "incoming").is_empty());
    assert_eq!(stored(&f, "sha256").len(), 1);
}

async fn check(f: &Fixture, who: &str, name: &str, body: &str) -> (StatusCode, String) {
    let uri = format!("/v1/images/{name}/upload-check");
    call(f, "POST", &uri, Some(who), Some(body)).await
}

/// `upload-check` answers what the upload would before a byte is sent (the CLI asks it
/// first: a refused upload of more than the controller drains reads as a broken pipe), and
/// keeps nothing.
#[tokio::test]
async fn an_upload_check_answers_what_the_upload_would() {
    let f = fixture().await;
    project(&f, "acme").await;
    let acme = token(&f, "acme", "member").await;
    let reader = token(&f, "acme", "reader").await;
    let quota = Some(r#"{"image_mib": 3}"#);
    let (s, b) = call(&f, "PUT", "/v1/projects/acme/quota", Some(&f.token), quota).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = upload(&f, "/v1/images/a/upload", &acme, &raw_disk(2)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = check(&f, &acme, "b", r#"{"size_bytes": 1048576}"#).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, b) = check(&f, &acme, "a", r#"{"size_bytes": 1048576}"#).await;
    refused(
        s,
        &b,
        ErrorCode::Conflict,
        "already exists in project acme; choose another name",
    );
    let (s, b) = check(&f, &acme, "b", r#"{"size_bytes": 2097152}"#).await;
    refused(
        s,
        &b,
        ErrorCode::QuotaExceeded,
        "image_mib quota 3 would be exceeded",
    );
    let (s, b) = check(&f, &acme, "b", r#"{"size_bytes": 0}"#).await;
    refused(s, &b, ErrorCode::PayloadTooLarge, "1 to");
    let (s, b) = check(&f, &acme, "b", r#"{"size_bytes": 1, "public": true}"#).await;
    refused(s, &b, ErrorCode::Forbidden, "only an admin");
    let (s, b) = check(&f, &reader, "b", r#"{"size_bytes": 1}"#).await;
    refused(s, &b, ErrorCode::Forbidden, "reader");
    let (s, _) = call(&f, "GET", "/v1/images/b", Some(&acme), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a check stores nothing");
    assert!(stored(&f, "incoming").is_empty());
}

/// Another controller copies an image's bytes with its controller certificate only; a
/// controller whose copy is gone and that no live controller can give one to says which
/// image is lost and what to do, and serves nothing.
#[tokio::test]
async fn controllers_copy_bytes_from_each_other_and_say_which_image_is_lost() {
    use nimbus_controller::http::peer::ClientCert;
    let f = fixture().await;
    let disk = raw_disk(2);
    let (s, b) = upload(&f, "/v1/images/held/upload", &f.token, &disk).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let peer_uri = format!("/v1/internal/peers/images/{}", sha256(&disk));
    let (s, _) = common::get_bytes_as_host(&f, &peer_uri, "host1").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a host is not a controller");
    let (s, _) = call(&f, "GET", &peer_uri, Some(&f.token), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "nor is the admin token");
    let (s, body) = common::get_bytes_as(&f, &peer_uri, ClientCert::controller()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, disk);

    // The only copy is lost (this is the only controller): agents get a clear refusal.
    for p in stored(&f, "sha256") {
        std::fs::remove_file(p).expect("remove the copy");
    }
    let uri = format!("/v1/internal/images/{}", sha256(&disk));
    let (s, body) = common::get_bytes_as_host(&f, &uri, "host1").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("image held") && body.contains("upload the image again"),
        "{body}"
    );
    let (s, _) = common::get_bytes_as(&f, &peer_uri, ClientCert::controller()).await;
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "a peer is served held copies only"
    );
    assert!(stored(&f, "incoming").is_empty());
}

#[tokio::test]
async fn agents_fetch_an_images_bytes_by_digest_with_their_host_certificate() {
    let f = fixture().await;
    let disk = raw_disk(2);
    let (s, b) = upload(&f, "/v1/images/d/upload", &f.token, &disk).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let uri = format!("/v1/internal/images/{}", sha256(&disk));
    let (s, _) = call(&f, "GET", &uri, Some(&f.token), None).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the admin token is not an agent's"
    );
    let (s, body) = common::get_bytes_as_host(&f, &uri, "host1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, disk);
    let unknown = format!("/v1/internal/images/{}", sha256(b"nothing"));
    let (s, _) = common::get_bytes_as_host(&f, &unknown, "host1").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = common::get_bytes_as_host(&f, "/v1/internal/images/..%2F..%2Fetc", "host1").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}
