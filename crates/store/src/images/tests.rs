use super::*;
use crate::testing::{new_instance, pick, project, stores};
use nimbus_api::QuotaLimits;

pub(super) fn uploaded(name: &str, project: &str, size_bytes: u64) -> NewImage {
    NewImage {
        name: name.into(),
        project: project.into(),
        public: false,
        digest: format!("sha256:{}", "ab".repeat(32)),
        format: "qcow2".into(),
        virtual_size: 1 << 30,
        size_bytes,
        firmware: Firmware::Bios,
        ready_marker: None,
    }
}

#[tokio::test]
async fn a_private_image_is_seen_only_by_its_project_a_public_one_by_all() {
    for (s, _b) in stores().await {
        project(&s, "a").await;
        project(&s, "b").await;
        let img = s
            .insert_uploaded_image(&uploaded("deb", "a", 10))
            .await
            .expect("insert");
        assert_eq!((img.project.as_str(), img.public), ("a", false));
        assert_eq!(img.virtual_size_bytes, Some(1 << 30));
        let (a, b) = (Scope::project("a"), Scope::project("b"));
        assert!(s.get_image("deb", &a).await.is_ok());
        assert!(matches!(
            s.get_image("deb", &b).await,
            Err(StoreError::NotFound { .. })
        ));
        // Project b sees only public images (the fixtures' admin-registered `default`).
        let seen_by_b = |list: Vec<nimbus_api::ImageView>| -> Vec<String> {
            list.into_iter()
                .map(|i| i.name)
                .filter(|n| n != crate::testing::DEFAULT_IMAGE)
                .collect()
        };
        assert!(seen_by_b(s.list_images(&b).await.expect("list")).is_empty());
        let public = NewImage {
            public: true,
            ..uploaded("pub", "a", 10)
        };
        s.insert_uploaded_image(&public).await.expect("public");
        assert_eq!(seen_by_b(s.list_images(&b).await.expect("list")), ["pub"]);
        let e = s.delete_image("pub", &b).await.expect_err("not b's");
        assert!(e.to_string().contains("belongs to project a"), "{e}");
        assert!(matches!(
            s.delete_image("deb", &b).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(s.image_digest_used(&public.digest).await.expect("used"));
        s.delete_image("deb", &a).await.expect("delete");
        s.delete_image("pub", &Scope::All).await.expect("admin");
        assert!(!s.image_digest_used(&public.digest).await.expect("unused"));
    }
}

#[tokio::test]
async fn the_image_quota_counts_the_bytes_a_project_owns() {
    for (s, _b) in stores().await {
        let limits = QuotaLimits {
            image_mib: Some(3),
            ..QuotaLimits::UNLIMITED
        };
        s.create_project("q", None, &limits, &crate::testing::default_network())
            .await
            .expect("project");
        s.check_image_quota("q", 2 << 20).await.expect("room");
        s.insert_uploaded_image(&uploaded("one", "q", 2 << 20))
            .await
            .expect("2 MiB fits");
        assert_eq!(s.quota_usage("q").await.expect("usage").image_mib, 2);
        let e = s
            .check_image_quota("q", (1 << 20) + 1)
            .await
            .expect_err("over");
        assert!(e.to_string().contains("image_mib quota 3"), "{e}");
        let e = s
            .insert_uploaded_image(&uploaded("two", "q", (1 << 20) + 1))
            .await
            .expect_err("over");
        assert!(matches!(e, StoreError::QuotaExceeded(ref q) if q.resource == "image_mib"));
        assert!(
            s.get_image("two", &Scope::All).await.is_err(),
            "nothing left"
        );
        s.insert_uploaded_image(&uploaded("two", "q", 1 << 20))
            .await
            .expect("exactly at the limit");
    }
}

#[tokio::test]
async fn an_image_in_use_cannot_be_deleted() {
    for (s, _b) in stores().await {
        project(&s, "a").await;
        s.insert_uploaded_image(&uploaded("deb", "a", 10))
            .await
            .expect("insert");
        let (mut inst, op) = new_instance("a", "vm");
        inst.image = "deb".into();
        inst.image_project = "a".into();
        s.insert_instance(&inst, &op, pick).await.expect("instance");
        let e = s
            .delete_image("deb", &Scope::project("a"))
            .await
            .expect_err("in use");
        assert!(e.to_string().contains("used by 1 instance"), "{e}");
        assert!(s.get_image("deb", &Scope::All).await.is_ok());
    }
}
