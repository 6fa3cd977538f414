//! Image names per project: the same name in two projects, own before public, and a
//! foreign private image that is never revealed.

use super::*;
use crate::testing::{database_before, new_instance, old_project, pick, project, stores, upgraded};

fn image(name: &str, project: &str, public: bool, digest_byte: &str) -> NewImage {
    NewImage {
        public,
        digest: format!("sha256:{}", digest_byte.repeat(32)),
        ..super::tests::uploaded(name, project, 10)
    }
}

async fn projects(s: &Store, names: &[&str]) {
    for name in names {
        project(s, name).await;
    }
}

/// The digest `scope` resolves `name` to (each test image has its own digest).
async fn resolved(s: &Store, name: &str, project: &str) -> Result<String, StoreError> {
    let img = s.get_image(name, &Scope::project(project)).await?;
    Ok(format!(
        "{}:{}",
        img.project,
        &img.digest.unwrap_or_default()[7..9]
    ))
}

#[tokio::test]
async fn two_projects_each_have_their_own_private_image_of_one_name() {
    for (s, _b) in stores().await {
        projects(&s, &["acme", "globex", "initech"]).await;
        s.insert_uploaded_image(&image("debian-12", "acme", false, "aa"))
            .await
            .expect("acme's");
        // acme's private image neither blocks nor shows through globex's upload.
        s.insert_uploaded_image(&image("debian-12", "globex", false, "bb"))
            .await
            .expect("globex's, despite acme's private one");
        assert_eq!(
            resolved(&s, "debian-12", "acme").await.expect("acme"),
            "acme:aa"
        );
        assert_eq!(
            resolved(&s, "debian-12", "globex").await.expect("globex"),
            "globex:bb"
        );
        assert!(matches!(
            s.get_image("debian-12", &Scope::project("initech")).await,
            Err(StoreError::NotFound { .. })
        ));
        // A second upload of the name in one project names only that project.
        let e = s
            .insert_uploaded_image(&image("debian-12", "globex", false, "cc"))
            .await
            .expect_err("same project");
        let text = e.to_string();
        assert!(text.contains("already exists in project globex"), "{text}");
        assert!(!text.contains("acme"), "{text}");
        // Each project lists its own only.
        let names = |l: Vec<ImageView>| -> Vec<(String, String)> {
            l.into_iter()
                .filter(|i| !i.public)
                .map(|i| (i.project, i.name))
                .collect()
        };
        let g = names(
            s.list_images(&Scope::project("globex"))
                .await
                .expect("list"),
        );
        assert_eq!(g, [("globex".to_string(), "debian-12".to_string())]);
        // Deleting globex's leaves acme's.
        s.delete_image("debian-12", &Scope::project("globex"))
            .await
            .expect("delete globex's");
        assert_eq!(
            resolved(&s, "debian-12", "acme").await.expect("acme"),
            "acme:aa"
        );
        assert!(s
            .get_image("debian-12", &Scope::project("globex"))
            .await
            .is_err());
    }
}

#[tokio::test]
async fn a_projects_own_image_wins_over_a_public_one_of_that_name() {
    for (s, _b) in stores().await {
        projects(&s, &["acme", "globex", "initech"]).await;
        s.insert_uploaded_image(&image("debian-12", "acme", true, "aa"))
            .await
            .expect("acme's public");
        s.insert_uploaded_image(&image("debian-12", "globex", false, "bb"))
            .await
            .expect("globex's own beside a public one");
        assert_eq!(
            resolved(&s, "debian-12", "globex").await.expect("own"),
            "globex:bb"
        );
        assert_eq!(
            resolved(&s, "debian-12", "initech").await.expect("public"),
            "acme:aa"
        );
        assert_eq!(
            resolved(&s, "debian-12", "acme").await.expect("acme"),
            "acme:aa"
        );
        // globex lists both, the project column telling them apart.
        let seen: Vec<(String, String)> = s
            .list_images(&Scope::project("globex"))
            .await
            .expect("list")
            .into_iter()
            .filter(|i| i.name == "debian-12")
            .map(|i| (i.project, i.name))
            .collect();
        assert_eq!(seen.len(), 2, "{seen:?}");
        // Pages of one row still show both rows of the name (the key is name, project).
        let mut req = PageRequest::first(1);
        let mut paged = Vec::new();
        loop {
            let page = s
                .list_images_page(&Scope::project("globex"), &req)
                .await
                .expect("page");
            paged.extend(page.items.into_iter().map(|i| (i.project, i.name)));
            match page.next {
                Some(key) => req.after = Some(key),
                None => break,
            }
        }
        assert_eq!(
            paged.iter().filter(|(_, n)| n == "debian-12").count(),
            2,
            "{paged:?}"
        );
        // A second public image of the name would make the name ambiguous for initech.
        let e = s
            .insert_uploaded_image(&image("debian-12", "initech", true, "cc"))
            .await
            .expect_err("public name taken");
        assert!(
            e.to_string()
                .contains("public image \"debian-12\" already exists (project acme)"),
            "{e}"
        );
        // globex cannot delete acme's public image through the name it resolves to its own:
        // it deletes its own, and then sees the public one.
        s.delete_image("debian-12", &Scope::project("globex"))
            .await
            .expect("own");
        assert_eq!(
            resolved(&s, "debian-12", "globex").await.expect("public"),
            "acme:aa"
        );
        let e = s
            .delete_image("debian-12", &Scope::project("globex"))
            .await
            .expect_err("not globex's");
        assert!(e.to_string().contains("belongs to project acme"), "{e}");
    }
}

#[tokio::test]
async fn an_instance_pins_the_image_row_of_its_project() {
    for (s, _b) in stores().await {
        projects(&s, &["acme", "globex"]).await;
        for p in ["acme", "globex"] {
            s.insert_uploaded_image(&image("app-golden", p, false, "aa"))
                .await
                .expect("image");
        }
        let (mut inst, op) = new_instance("globex", "vm");
        inst.image = "app-golden".into();
        inst.image_project = "globex".into();
        let rec = s.insert_instance(&inst, &op, pick).await.expect("instance");
        assert_eq!(rec.image_project, "globex");
        // acme's image of that name is not in use: it goes; globex's is in use: it stays.
        let e = s
            .delete_image("app-golden", &Scope::project("globex"))
            .await
            .expect_err("in use");
        assert!(e.to_string().contains("used by 1 instance"), "{e}");
        s.delete_image("app-golden", &Scope::project("acme"))
            .await
            .expect("acme's is unused");
        // An instance cannot be created on an image row that does not exist.
        let (mut other, op) = new_instance("acme", "vm2");
        other.image = "app-golden".into();
        other.image_project = "acme".into();
        assert!(matches!(
            s.insert_instance(&other, &op, pick).await,
            Err(StoreError::NotFound { .. })
        ));
    }
}

/// The upgrade: at migration 0034 names were global; 0035 keys images by (project, name),
/// keeps every row, and records each instance's image project (SQLite; the SQL is the same
/// on PostgreSQL, where every other test runs it too).
#[tokio::test]
async fn the_upgrade_keeps_images_and_pins_instances_to_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = database_before(dir.path(), "0035").await;
    old_project(&pool, "acme").await;
    sqlx::query(
        "INSERT INTO images (name, project, public, digest, format, size_bytes, created_at) \
         VALUES ('deb', 'acme', 0, 'sha256:x', 'qcow2', 10, '2026-01-01T00:00:00.000000Z')",
    )
    .execute(&pool)
    .await
    .expect("image");
    sqlx::query(
        "INSERT INTO instances (id, project, name, flavor, image, vcpus, memory_mib, disk_gib, \
         state, generation, agent_generation, created_at, updated_at) \
         VALUES ('00000000-0000-0000-0000-000000000001', 'acme', 'web1', 'small', 'deb', 1, \
         512, 2, 'running', 1, 0, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
    )
    .execute(&pool)
    .await
    .expect("instance");

    let s = upgraded(pool, dir.path()).await;
    let inst = s
        .get_instance_by_id(&Scope::All, uuid::Uuid::from_u128(1))
        .await
        .expect("instance");
    assert_eq!(inst.image_project, "acme");
    let img = s.get_image_in("acme", "deb").await.expect("kept");
    assert_eq!(img.digest.as_deref(), Some("sha256:x"));
    let e = s
        .delete_image("deb", &Scope::project("acme"))
        .await
        .expect_err("in use");
    assert!(e.to_string().contains("used by 1 instance"), "{e}");
    // The new key: another project may now take the name.
    project(&s, "globex").await;
    s.insert_uploaded_image(&image("deb", "globex", false, "bb"))
        .await
        .expect("globex's deb");
}
