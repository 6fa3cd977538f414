//! What the last hash of a cached image saw of its file (`images/verified/<hex>`), so that
//! the next uses need not hash it again while the file is provably untouched.
//!
//! A marker records the file's device, inode, size, mtime and ctime (nanoseconds). A write,
//! truncation, chmod or utime through the file system sets the ctime, which no process can
//! set back (only moving the clock could); a file replaced by another (renamed over, copied
//! back, restored from a backup) has another inode or device. While the marker matches, no
//! one changed the file since it was hashed, and it is used as it is.
//!
//! What a marker cannot see, no hash at create time saw either: a disk that returns other
//! bytes than were written (bit rot on a file system without checksums, a hostile block
//! device) changes no metadata, and QEMU reads the image on every guest access, long after
//! any check at create time; that is the job of a checksumming file system or dm-verity under
//! the state directory. Whoever can write the state directory as root can rewrite a marker
//! as well as the image: the agent's state directory is inside its trust boundary, as its
//! binary is.
//!
//! Racy timestamps (git's "racily clean" entries): file times have the granularity of the
//! kernel's clock tick, so a change in the same tick as the hash began would leave them as
//! they were. A marker is written only for a file whose ctime is at least [`SETTLED`] older
//! than the moment its hash began, and unchanged when it ended; a file changed more recently
//! (one just downloaded) is hashed again at its next use. A marker also serves as the
//! image's last-use time (its mtime), so that marking an image used never touches the image.

use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How much older than a hash's start a file's last change must be for the hash to be
/// remembered: far above any clock tick, small beside the time between two creates.
pub const SETTLED: Duration = Duration::from_secs(1);

/// What identifies a file's state: any change through the file system changes one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Seen {
    /// The state of the file at `path` now (not following a symbolic link).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// Whether the file last changed at least [`SETTLED`] before `instant`.
    fn settled_before(&self, instant: SystemTime) -> bool {
        let (secs, nanos) = self.ctime;
        let Ok(secs) = u64::try_from(secs) else {
            return false;
        };
        let changed =
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos as u64);
        changed + SETTLED <= instant
    }
}

/// A marker's content.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    /// The digest the file hashed to.
    digest: String,
    seen: Seen,
}

/// The markers of one cache.
pub struct Markers {
    dir: PathBuf,
}

impl Markers {
    /// Markers in `dir` (which must exist).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, digest: &nimbus_image::Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Whether `image` is as it was when it last hashed to `digest`.
    pub fn hold(&self, digest: &nimbus_image::Digest, image: &Path) -> bool {
        let Ok(bytes) = std::fs::read(self.path(digest)) else {
            return false;
        };
        let Ok(marker) = serde_json::from_slice::<Marker>(&bytes) else {
            return false;
        };
        marker.digest == digest.to_string() && Seen::of(image).is_ok_and(|now| now == marker.seen)
    }

    /// Remembers that `image` hashed to `digest` by a hash that began at `began`, when the
    /// file was `before`: only if it is still so and had settled by then (see the module
    /// documentation). A marker that cannot be written only costs a hash at the next use.
    pub fn record(
        &self,
        digest: &nimbus_image::Digest,
        image: &Path,
        before: Seen,
        began: SystemTime,
    ) {
        if !before.settled_before(began) || Seen::of(image).ok() != Some(before) {
            self.remove(digest);
            return;
        }
        let marker = Marker {
            digest: digest.to_string(),
            seen: before,
        };
        let path = self.path(digest);
        let written = serde_json::to_vec(&marker)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&path, bytes));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot record a verified image");
        }
    }

    /// Forgets `digest` (its image is going, or was found changed).
    pub fn remove(&self, digest: &nimbus_image::Digest) {
        let path = self.path(digest);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an image's marker");
            }
        }
    }

    /// Marks `digest` used now, in its marker; false when it has none.
    pub fn touch(&self, digest: &nimbus_image::Digest) -> bool {
        std::fs::File::options()
            .append(true)
            .open(self.path(digest))
            .and_then(|f| f.set_modified(SystemTime::now()))
            .is_ok()
    }

    /// When `digest` was last marked used through its marker.
    pub fn last_used(&self, digest: &nimbus_image::Digest) -> Option<SystemTime> {
        std::fs::metadata(self.path(digest)).ok()?.modified().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> nimbus_image::Digest {
        hex::encode([byte; 32]).parse().expect("digest")
    }

    /// A file last changed just over [`SETTLED`] ago, in `dir`.
    fn settled_file(dir: &Path) -> PathBuf {
        let path = dir.join("image");
        std::fs::write(&path, b"bytes").expect("write");
        std::thread::sleep(SETTLED + Duration::from_millis(100));
        path
    }

    /// Markers in `dir`, a settled file there, and its marker recorded (as digest 1).
    fn recorded(dir: &Path) -> (Markers, PathBuf, nimbus_image::Digest) {
        let markers = Markers::new(dir.to_path_buf());
        let image = settled_file(dir);
        let d = digest(1);
        let seen = Seen::of(&image).expect("stat");
        markers.record(&d, &image, seen, SystemTime::now());
        (markers, image, d)
    }

    #[test]
    fn a_marker_holds_until_the_file_changes_in_any_way() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (markers, image, d) = recorded(tmp.path());
        assert!(markers.hold(&d, &image));
        assert!(!markers.hold(&digest(2), &image), "another digest's marker");
        assert!(markers.touch(&d), "marking it used");
        assert!(markers.hold(&d, &image), "using it is no change");

        // Same size, same mtime set back: the ctime still tells.
        let mtime = std::fs::metadata(&image)
            .expect("meta")
            .modified()
            .expect("mtime");
        std::fs::write(&image, b"BYTES").expect("rewrite");
        std::fs::File::options()
            .append(true)
            .open(&image)
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime back");
        assert!(!markers.hold(&d, &image));
    }

    #[test]
    fn a_replaced_file_or_a_bad_marker_does_not_hold() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (markers, image, d) = recorded(tmp.path());
        let other = tmp.path().join("other");
        std::fs::copy(&image, &other).expect("copy");
        std::fs::rename(&other, &image).expect("replace");
        assert!(!markers.hold(&d, &image), "another inode");

        std::fs::write(tmp.path().join(d.hex()), b"{not json").expect("garble");
        assert!(!markers.hold(&d, &image));
        markers.remove(&d);
        assert!(!markers.hold(&d, &image));
        assert!(!markers.touch(&d), "no marker to mark");
    }

    #[test]
    fn a_hash_of_a_file_changed_just_before_or_during_it_is_not_remembered() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let markers = Markers::new(tmp.path().to_path_buf());
        let d = digest(1);
        // Changed within SETTLED of the hash's start: racy, hashed again next time.
        let fresh = tmp.path().join("fresh");
        std::fs::write(&fresh, b"bytes").expect("write");
        markers.record(
            &d,
            &fresh,
            Seen::of(&fresh).expect("stat"),
            SystemTime::now(),
        );
        assert!(!markers.hold(&d, &fresh));

        // Changed while it was hashed.
        let image = settled_file(tmp.path());
        let before = Seen::of(&image).expect("stat");
        let began = SystemTime::now();
        std::fs::write(&image, b"other").expect("change");
        markers.record(&d, &image, before, began);
        assert!(!markers.hold(&d, &image));
    }
}
