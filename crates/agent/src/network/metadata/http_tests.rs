use super::*;
use crate::network::metadata::registry::tests::vm;
use base64::Engine as _;
use nimbus_agent_api::{CloudInitSeed, FloatingNat};

fn service() -> (Service, nimbus_agent_api::VmSpec) {
    let registry = Arc::new(Registry::default());
    let mut spec = vm("10.0.0.11", 7);
    spec.name = "web_1".into();
    spec.seed = Some(CloudInitSeed {
        instance_id: spec.id.to_string(),
        hostname: spec.name.clone(),
        public_keys: vec!["ssh-ed25519 AAAAC3Nza test@laptop".into()],
        user_data: Some(base64::engine::general_purpose::STANDARD.encode("#cloud-config\n")),
    });
    registry.register(&spec);
    let svc = Service {
        vni: 7,
        registry,
        tokens: Tokens::random(),
    };
    (svc, spec)
}

fn peer(ip: &str) -> IpAddr {
    ip.parse().expect("ip")
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().expect("header value"));
    }
    h
}

async fn body(resp: Response) -> (StatusCode, String) {
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The answer to `method path` with `h` and `body` from `from`.
fn call(
    svc: &Service,
    from: &str,
    method: Method,
    path: &str,
    h: &HeaderMap,
    body: &[u8],
) -> Response {
    let req = Request {
        method: &method,
        path,
        headers: h,
        body,
    };
    answer(svc, peer(from), &req, SystemTime::now())
}

/// A token for the instance at 10.0.0.11.
async fn token(svc: &Service) -> String {
    let h = headers(&[(TTL_HEADER, "60")]);
    let resp = call(svc, "10.0.0.11", Method::PUT, TOKEN_PATH, &h, b"");
    let (status, token) = body(resp).await;
    assert_eq!(status, StatusCode::OK);
    token
}

async fn get(svc: &Service, from: &str, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let h = match token {
        Some(t) => headers(&[(TOKEN_HEADER, t)]),
        None => HeaderMap::new(),
    };
    body(call(svc, from, Method::GET, path, &h, b"")).await
}

#[tokio::test]
async fn every_get_needs_a_token_of_the_same_instance() {
    let (svc, _) = service();
    let (status, _) = get(&svc, "10.0.0.11", "/latest/meta-data/instance-id", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let t = token(&svc).await;
    let (status, _) = get(&svc, "10.0.0.11", "/latest/meta-data/", Some("1.00")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Another instance of the network presenting this token.
    let mut other = vm("10.0.0.12", 7);
    other.id = uuid::Uuid::new_v4();
    svc.registry.register(&other);
    let (status, _) = get(&svc, "10.0.0.12", "/latest/meta-data/", Some(&t)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // An address of no instance here, or of another network: nothing at all.
    let (status, _) = get(&svc, "10.0.0.99", "/latest/meta-data/", Some(&t)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let other_net = Service {
        vni: 8,
        ..svc.clone()
    };
    let (status, _) = get(&other_net, "10.0.0.11", "/latest/meta-data/", Some(&t)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn token_requests_are_checked() {
    let (svc, _) = service();
    let put = |h: &HeaderMap| call(&svc, "10.0.0.11", Method::PUT, TOKEN_PATH, h, b"");
    for h in [
        headers(&[]),
        headers(&[(TTL_HEADER, "0")]),
        headers(&[(TTL_HEADER, "21601")]),
        headers(&[(TTL_HEADER, "ten")]),
    ] {
        assert_eq!(put(&h).status(), StatusCode::BAD_REQUEST, "{h:?}");
    }
    let proxied = headers(&[(TTL_HEADER, "60"), ("x-forwarded-for", "10.0.0.5")]);
    assert_eq!(put(&proxied).status(), StatusCode::FORBIDDEN);
    let get = call(
        &svc,
        "10.0.0.11",
        Method::GET,
        TOKEN_PATH,
        &headers(&[]),
        b"",
    );
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    let ok = put(&headers(&[(TTL_HEADER, "21600")]));
    assert_eq!(ok.headers()[TTL_HEADER], "21600");
}

#[tokio::test]
async fn the_instance_reads_its_own_metadata_in_the_ec2_layout() {
    let (svc, spec) = service();
    let t = token(&svc).await;
    let read = |path: &'static str| {
        let (svc, t) = (svc.clone(), t.clone());
        async move { get(&svc, "10.0.0.11", path, Some(&t)).await }
    };
    let ok = |s: &str| (StatusCode::OK, s.to_string());
    assert_eq!(
        read("/latest/meta-data/").await,
        ok("hostname\ninstance-id\nlocal-hostname\nlocal-ipv4\npublic-keys/")
    );
    assert_eq!(
        read("/latest/meta-data/instance-id").await,
        ok(&spec.id.to_string())
    );
    assert_eq!(read("/2009-04-04/meta-data/hostname").await, ok("web-1"));
    assert_eq!(read("/latest/meta-data/local-hostname").await, ok("web-1"));
    assert_eq!(read("/latest/meta-data/local-ipv4").await, ok("10.0.0.11"));
    assert_eq!(read("/latest/meta-data/public-keys/").await, ok("0=key-0"));
    assert_eq!(
        read("/latest/meta-data/public-keys/0/").await,
        ok("openssh-key")
    );
    assert_eq!(
        read("/latest/meta-data/public-keys/0/openssh-key").await,
        ok("ssh-ed25519 AAAAC3Nza test@laptop\n")
    );
    assert_eq!(read("/latest/user-data").await, ok("#cloud-config\n"));
    assert_eq!(read("/latest/").await, ok("meta-data\nuser-data"));
    for missing in [
        "/latest/meta-data/public-ipv4",
        "/latest/meta-data/public-keys/1/openssh-key",
        "/latest/meta-data/iam/",
        "/v1/meta-data/instance-id",
        "/latest/dynamic/",
    ] {
        assert_eq!(read(missing).await.0, StatusCode::NOT_FOUND, "{missing}");
    }
    svc.registry.set_floating(&[FloatingNat {
        vni: 7,
        floating: "203.0.113.5".into(),
        private: "10.0.0.11".into(),
    }]);
    assert_eq!(
        read("/latest/meta-data/public-ipv4").await,
        ok("203.0.113.5")
    );
    assert!(read("/latest/meta-data").await.1.contains("public-ipv4"));
}

#[tokio::test]
async fn a_readiness_report_marks_only_the_calling_instance_and_is_rate_limited() {
    let (svc, spec) = service();
    let mut other = vm("10.0.0.12", 7);
    other.id = uuid::Uuid::new_v4();
    svc.registry.register(&other);
    let t = token(&svc).await;
    let with = |t: &str| headers(&[(TOKEN_HEADER, t)]);
    let post =
        |from: &str, h: &HeaderMap| call(&svc, from, Method::POST, READY_PATH, h, b"status: done");
    // No token, a token of another instance, a GET, an address of no instance: refused,
    // and nothing is recorded.
    assert_eq!(
        post("10.0.0.11", &headers(&[])).status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post("10.0.0.12", &with(&t)).status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(post("10.0.0.99", &with(&t)).status(), StatusCode::FORBIDDEN);
    let get = call(&svc, "10.0.0.11", Method::GET, READY_PATH, &with(&t), b"");
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(svc.registry.ready_report(spec.id), None);
    // The instance's own report marks it, and it alone.
    assert_eq!(
        post("10.0.0.11", &with(&t)).status(),
        StatusCode::NO_CONTENT
    );
    let at = svc.registry.ready_report(spec.id).expect("recorded");
    assert_eq!(svc.registry.ready_report(other.id), None);
    // Again at once: 429 with a Retry-After, and the first report's time stays.
    let again = post("10.0.0.11", &with(&t));
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(again.headers()["retry-after"], "2");
    assert_eq!(svc.registry.ready_report(spec.id), Some(at));
    // Forgetting the instance (it left this host) forgets its report.
    svc.registry.forget(&spec);
    assert_eq!(svc.registry.ready_report(spec.id), None);
}

#[tokio::test]
async fn a_body_over_the_bound_is_refused_before_anything_else() {
    use tower::ServiceExt as _;
    let (svc, spec) = service();
    let t = token(&svc).await;
    let app = router(svc.clone()).layer(axum::Extension(ConnectInfo(SocketAddr::from((
        [10, 0, 0, 11],
        40000,
    )))));
    let request = |len: usize| {
        axum::http::Request::post(READY_PATH)
            .header(TOKEN_HEADER, &t)
            .body(Body::from(vec![b'x'; len]))
            .expect("request")
    };
    let big = app
        .clone()
        .oneshot(request(MAX_BODY_BYTES + 1))
        .await
        .expect("answer");
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(svc.registry.ready_report(spec.id), None);
    let ok = app.oneshot(request(MAX_BODY_BYTES)).await.expect("answer");
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert!(svc.registry.ready_report(spec.id).is_some());
}

#[test]
fn reported_text_is_logged_as_one_printable_line() {
    assert_eq!(
        printable(b"status: done\n\x1b[31mfake\x00"),
        "status: done  [31mfake"
    );
    assert_eq!(printable(&[b'a'; 500]).len(), 200);
}
