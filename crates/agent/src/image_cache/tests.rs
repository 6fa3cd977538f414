//! The cache against a stand-in for the controller's image route (a loopback axum server
//! that counts requests and can be told to lie): the cache is the subject, not the server.

use super::*;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use nimbus_image::Sha256Writer;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::AtomicUsize;

#[derive(Clone, Default)]
struct Served {
    blobs: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    requests: Arc<AtomicUsize>,
    /// Flip a byte of every answer.
    lie: Arc<std::sync::atomic::AtomicBool>,
}

async fn serve_blob(
    State(s): State<Served>,
    headers: HeaderMap,
    UrlPath(hex): UrlPath<String>,
) -> Result<Vec<u8>, StatusCode> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer secret") {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let mut bytes = s
        .blobs
        .lock()
        .expect("lock")
        .get(&hex)
        .cloned()
        .ok_or(StatusCode::NOT_FOUND)?;
    if s.lie.load(Ordering::SeqCst) {
        bytes[600] ^= 1;
    }
    // Slow enough that concurrent ensures overlap.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    Ok(bytes)
}

async fn controller(served: Served) -> String {
    let app = axum::Router::new()
        .route("/v1/internal/images/{hex}", get(serve_blob))
        .with_state(served);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A raw disk of `kib` KiB (MBR signature) whose bytes depend on `seed`.
fn disk(kib: usize, seed: u8) -> Vec<u8> {
    let mut d: Vec<u8> = (0..kib * 1024)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    d[510] = 0x55;
    d[511] = 0xaa;
    d
}

fn publish(served: &Served, bytes: &[u8]) -> ImageBlob {
    let mut w = Sha256Writer::default();
    w.update(bytes);
    let digest = w.finish();
    served
        .blobs
        .lock()
        .expect("lock")
        .insert(digest.hex(), bytes.to_vec());
    ImageBlob {
        digest: digest.to_string(),
        format: "raw".into(),
        size_bytes: bytes.len() as u64,
    }
}

async fn cache(dir: &Path, served: &Served, max_bytes: u64) -> ImageCache {
    let source = ImageSource {
        controller_urls: vec![controller(served.clone()).await],
        tls: None,
        token: Some("secret".into()),
    };
    ImageCache::open(dir, Some(source), max_bytes).expect("open")
}

fn incoming_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("images/incoming"))
        .expect("incoming")
        .next()
        .is_none()
}

#[tokio::test]
async fn concurrent_ensures_download_once_and_a_damaged_copy_is_fetched_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let served = Served::default();
    let bytes = disk(256, 7);
    let blob = publish(&served, &bytes);
    let c = Arc::new(cache(tmp.path(), &served, 1 << 30).await);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (c, blob) = (c.clone(), blob.clone());
            tokio::spawn(async move {
                c.ensure(&blob, &HashSet::new())
                    .await
                    .map(|l| l.path.clone())
            })
        })
        .collect();
    let mut paths = Vec::new();
    for t in tasks {
        paths.push(t.await.expect("join").expect("ensure"));
    }
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(served.requests.load(Ordering::SeqCst), 1, "one download");
    assert_eq!(std::fs::read(&paths[0]).expect("read"), bytes);

    // One byte changed on disk: detected, fetched again, repaired.
    let mut damaged = bytes.clone();
    damaged[1000] ^= 0xff;
    std::fs::write(&paths[0], &damaged).expect("damage");
    let lease = c.ensure(&blob, &HashSet::new()).await.expect("repair");
    assert_eq!(std::fs::read(&lease.path).expect("read"), bytes);
    assert_eq!(served.requests.load(Ordering::SeqCst), 2);
    let report = c.report(&HashSet::new());
    assert_eq!((report.downloads, report.repairs), (2, 1));
    assert_eq!(report.images.len(), 1);
    assert_eq!(report.used_bytes, bytes.len() as u64);
}

/// Any controller serves every image: a controller that is down (nothing listens at its
/// address, as after a kill -9) is passed over for the next one.
#[tokio::test]
async fn a_controller_that_is_down_is_passed_over_for_the_next() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let served = Served::default();
    let bytes = disk(64, 5);
    let blob = publish(&served, &bytes);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let source = ImageSource {
        controller_urls: vec![dead_url, controller(served.clone()).await],
        tls: None,
        token: Some("secret".into()),
    };
    let c = ImageCache::open(tmp.path(), Some(source), 1 << 30).expect("open");
    let lease = c.ensure(&blob, &HashSet::new()).await.expect("fetched");
    assert_eq!(std::fs::read(&lease.path).expect("read"), bytes);
    assert_eq!(served.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bytes_that_do_not_match_the_digest_never_enter_the_cache() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let served = Served::default();
    let blob = publish(&served, &disk(64, 3));
    served.lie.store(true, Ordering::SeqCst);
    let c = cache(tmp.path(), &served, 1 << 30).await;
    let e = c
        .ensure(&blob, &HashSet::new())
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code(), "image_unavailable");
    assert!(e.to_string().contains("nothing was kept"), "{e}");
    assert!(c.report(&HashSet::new()).images.is_empty());
    assert!(incoming_is_empty(tmp.path()));
    // A wrong token is refused by the controller: an error, nothing cached.
    let source = ImageSource {
        controller_urls: vec![controller(served.clone()).await],
        tls: None,
        token: Some("wrong".into()),
    };
    let c = ImageCache::open(tmp.path(), Some(source), 1 << 30).expect("open");
    served.lie.store(false, Ordering::SeqCst);
    assert!(c.ensure(&blob, &HashSet::new()).await.is_err());
    // Without a controller an uncached image cannot be had.
    let c = ImageCache::open(tmp.path(), None, 1 << 30).expect("open");
    let e = c
        .ensure(&blob, &HashSet::new())
        .await
        .err()
        .expect("no source");
    assert!(e.to_string().contains("no controller"), "{e}");
}

#[tokio::test]
async fn eviction_drops_the_least_recently_used_image_no_vm_uses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let served = Served::default();
    let (a, b, c3) = (
        publish(&served, &disk(100, 1)),
        publish(&served, &disk(100, 3)),
        publish(&served, &disk(100, 5)),
    );
    // Room for two images of 100 KiB.
    let cache = cache(tmp.path(), &served, 250 * 1024).await;
    let digest = |b: &ImageBlob| b.digest.parse::<Digest>().expect("digest");
    let in_use: HashSet<Digest> = [digest(&a)].into();
    drop(cache.ensure(&a, &in_use).await.expect("a"));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    drop(cache.ensure(&b, &in_use).await.expect("b"));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // a is the oldest but in use: b goes.
    let lease_c = cache.ensure(&c3, &in_use).await.expect("c");
    let held: HashSet<String> = cache
        .report(&in_use)
        .images
        .into_iter()
        .map(|i| i.digest)
        .collect();
    assert_eq!(held, [a.digest.clone(), c3.digest.clone()].into());
    // A leased image (a define in progress) is kept too, even over the bound.
    drop(cache.ensure(&b, &HashSet::new()).await.expect("b again"));
    assert!(lease_c.path.is_file(), "leased c survives");
    let held: HashSet<String> = cache
        .report(&HashSet::new())
        .images
        .into_iter()
        .map(|i| i.digest)
        .collect();
    assert_eq!(
        held,
        [b.digest.clone(), c3.digest.clone()].into(),
        "a, no longer used, went"
    );
}

/// A cached image is hashed again until its file has settled, then used without a hash while
/// the file is untouched; a change, even one that sets the mtime back, is hashed and repaired.
#[tokio::test]
async fn an_untouched_cached_image_is_used_without_hashing_it_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let served = Served::default();
    let bytes = disk(256, 9);
    let blob = publish(&served, &bytes);
    let c = cache(tmp.path(), &served, 1 << 30).await;
    let none = HashSet::new();
    let path = c.ensure(&blob, &none).await.expect("download").path.clone();
    assert_eq!(c.hashes(), 0, "the download hashed the bytes on the way");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o444, "cached images are read-only");

    // Just written: too fresh for its times to prove anything, so hashed at each use.
    c.ensure(&blob, &none).await.expect("fresh");
    assert_eq!(c.hashes(), 1);
    tokio::time::sleep(verified::SETTLED + std::time::Duration::from_millis(100)).await;
    c.ensure(&blob, &none).await.expect("settled");
    assert_eq!(c.hashes(), 2, "hashed once more, and remembered");
    for _ in 0..3 {
        c.ensure(&blob, &none).await.expect("cached");
    }
    assert_eq!(c.hashes(), 2, "untouched: no hash");
    assert_eq!(served.requests.load(Ordering::SeqCst), 1);

    // One byte changed, the mtime set back: the change time still tells.
    let mtime = std::fs::metadata(&path)
        .expect("meta")
        .modified()
        .expect("mtime");
    let mut damaged = bytes.clone();
    damaged[1000] ^= 0xff;
    std::fs::write(&path, &damaged).expect("damage");
    std::fs::File::open(&path)
        .and_then(|f| f.set_modified(mtime))
        .expect("mtime back");
    let lease = c.ensure(&blob, &none).await.expect("repair");
    assert_eq!(std::fs::read(&lease.path).expect("read"), bytes);
    assert_eq!(c.hashes(), 3);
    let report = c.report(&none);
    assert_eq!((report.downloads, report.repairs), (2, 1));
}
