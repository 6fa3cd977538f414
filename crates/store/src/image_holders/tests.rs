use crate::testing::{controller, stores};
use crate::NewImage;
use nimbus_api::{Firmware, QuotaLimits};
use std::time::Duration;

const TTL: Duration = Duration::from_secs(30);

fn uploaded(name: &str, digest: &str) -> NewImage {
    NewImage {
        name: name.into(),
        project: "p".into(),
        public: false,
        digest: digest.into(),
        format: "raw".into(),
        virtual_size: 1 << 20,
        size_bytes: 1 << 20,
        firmware: Firmware::Bios,
        ready_marker: None,
    }
}

#[tokio::test]
async fn holders_are_live_controllers_and_gone_ones_are_forgotten() {
    for (s, _b) in stores().await {
        s.create_project(
            "p",
            None,
            &QuotaLimits::UNLIMITED,
            &crate::testing::default_network(),
        )
        .await
        .expect("project");
        let (d1, d2) = (
            format!("sha256:{}", "11".repeat(32)),
            format!("sha256:{}", "22".repeat(32)),
        );
        s.insert_uploaded_image(&uploaded("one", &d1))
            .await
            .expect("one");
        s.insert_uploaded_image(&uploaded("two", &d2))
            .await
            .expect("two");
        let a = controller(&s, TTL).await;
        s.add_image_holder(&d1, a).await.expect("a holds one");
        s.add_image_holder(&d1, a).await.expect("idempotent");
        assert_eq!(
            s.image_digests_missing_on(a).await.expect("a"),
            std::slice::from_ref(&d2)
        );
        let holders = s.live_image_holders(&d1, TTL).await.expect("holders");
        assert_eq!(holders.len(), 1);
        assert_eq!(holders[0].controller, a);
        assert!(s
            .live_image_holders(&d2, TTL)
            .await
            .expect("none")
            .is_empty());
        assert_eq!(s.image_names_of_digest(&d1).await.expect("names"), ["one"]);

        // A controller that stopped (row gone) holds nothing (SQLite serves one controller
        // at a time: the next one starts after it).
        s.unregister_controller(a).await.expect("a stops");
        assert!(s
            .live_image_holders(&d1, TTL)
            .await
            .expect("gone")
            .is_empty());
        let b = controller(&s, TTL).await;
        assert_eq!(
            s.image_digests_missing_on(b).await.expect("b"),
            [d1.clone(), d2.clone()]
        );
        // Nor is a deleted image's digest held by anyone.
        s.add_image_holder(&d2, b).await.expect("b holds two");
        s.delete_image("two", &crate::Scope::All)
            .await
            .expect("delete two");
        assert_eq!(s.forget_gone_image_holders().await.expect("forget"), 2);
        assert_eq!(s.forget_gone_image_holders().await.expect("again"), 0);
        s.remove_image_holder(&d1, b)
            .await
            .expect("nothing to remove");
    }
}
