//! Which disk path an agent may report for a migration on shared storage.

use uuid::Uuid;

/// Whether `path`, as the source agent reports it, is instance `id`'s disk directory on the
/// shared storage `dir` (`<dir>/<id>/...`): the target is told to open exactly that, so an
/// agent's report can never point it at another file (`..` refused).
pub(crate) fn is_own_shared_disk(dir: &str, id: Uuid, path: &std::path::Path) -> bool {
    path.is_absolute()
        && !has_dots(path)
        && path.starts_with(std::path::Path::new(dir).join(id.to_string()))
}

pub(crate) fn has_dots(path: &std::path::Path) -> bool {
    use std::path::Component;
    path.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_reported_disk_path_must_be_the_instance_s_own() {
        let id = Uuid::nil();
        let own = format!("/srv/shared/{id}/disk.qcow2");
        assert!(is_own_shared_disk("/srv/shared", id, Path::new(&own)));
        for bad in [
            format!("/srv/shared/{id}/../other/disk.qcow2"),
            "/srv/shared/other/disk.qcow2".to_string(),
            "/etc/shadow".to_string(),
            format!("srv/shared/{id}/disk.qcow2"),
        ] {
            assert!(
                !is_own_shared_disk("/srv/shared", id, Path::new(&bad)),
                "{bad}"
            );
        }
    }
}
