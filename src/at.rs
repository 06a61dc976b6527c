//! System calls on paths relative to an open directory (`fstatat`,
//! `openat`): no walk from `/` for each of a project's 30,000 paths, and
//! the lowest layer of file access, below `files.rs` and `stamp.rs`.

/// `lstat` of `rel` relative to an open directory (no path walk from `/`);
/// `None` when `rel` cannot be passed to the kernel (a NUL byte).
pub fn lstat_at(dir: &std::fs::File, rel: &str) -> Option<std::io::Result<libc::stat>> {
    fstat_at(dir, rel, libc::AT_SYMLINK_NOFOLLOW)
}

/// [`lstat_at`], following a final symlink.
pub fn stat_at(dir: &std::fs::File, rel: &str) -> Option<std::io::Result<libc::stat>> {
    fstat_at(dir, rel, 0)
}

fn fstat_at(
    dir: &std::fs::File,
    rel: &str,
    flags: libc::c_int,
) -> Option<std::io::Result<libc::stat>> {
    use std::os::fd::AsRawFd;
    let rel = if rel.is_empty() { "." } else { rel };
    if rel.as_bytes().contains(&0) {
        return None;
    }
    // the path, NUL-terminated, on the stack: a no-op build stats 30,000
    // paths at 10,000 targets, and an allocation each was a tenth of it
    let mut short = [0u8; 256];
    let long;
    let c: &[u8] = if rel.len() < short.len() {
        short[..rel.len()].copy_from_slice(rel.as_bytes());
        &short[..=rel.len()]
    } else {
        long = std::ffi::CString::new(rel).ok()?;
        long.as_bytes_with_nul()
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `c` is NUL-terminated with no NUL before (checked above),
    // `st` is written by fstatat before it is read, and `dir` keeps the
    // descriptor open.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr().cast(), st.as_mut_ptr(), flags) };
    if rc != 0 {
        return Some(Err(std::io::Error::last_os_error()));
    }
    // SAFETY: fstatat returned 0, so it filled `st`.
    Some(Ok(unsafe { st.assume_init() }))
}

/// Opens `rel` for reading relative to an open directory, without
/// following a final symlink.
pub fn open_at(dir: &std::fs::File, rel: &str) -> Option<std::fs::File> {
    open_with(
        dir,
        rel,
        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
    )
}

/// `openat` of `rel` relative to `dir` with `flags`.
fn open_with(dir: &std::fs::File, rel: &str, flags: libc::c_int) -> Option<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let c = std::ffi::CString::new(rel).ok()?;
    // SAFETY: `c` is NUL-terminated and `dir` keeps its descriptor open; a
    // non-negative result is a new descriptor that we own from here on.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    // SAFETY: see above; `fd` is open and owned by nobody else.
    (fd >= 0).then(|| unsafe { std::fs::File::from_raw_fd(fd) })
}

/// The parent directories of the last few paths looked up, open, so that a
/// run over many paths (the no-op stamp's two million at a million
/// targets) stats each by its name in its directory: the kernel then walks
/// one component, not every one from the project root. (That walk,
/// `__d_lookup_rcu`, was a fifth of a no-op build's CPU time at a million
/// targets.) A directory is opened as the walk would have gone, following
/// symlinks; one that cannot be opened is left to the walk, which gives
/// the error.
pub struct ParentDirs<'a> {
    root: &'a std::fs::File,
    /// Most recently used last; at most [`ParentDirs::KEPT`].
    open: Vec<(String, Option<std::fs::File>)>,
}

impl<'a> ParentDirs<'a> {
    /// Enough for the entries of a `foreach` (an input's directory and its
    /// output's, in turn) and a few more.
    const KEPT: usize = 4;

    pub fn new(root: &'a std::fs::File) -> ParentDirs<'a> {
        ParentDirs {
            root,
            open: Vec::with_capacity(Self::KEPT),
        }
    }

    /// A directory and a path relative to it that name what `rel`
    /// (relative to the root) names.
    pub fn split<'p>(&mut self, rel: &'p str) -> (&std::fs::File, &'p str) {
        let Some((parent, name)) = rel.rsplit_once('/') else {
            return (self.root, rel);
        };
        if name.is_empty() || name == ".." || name == "." {
            return (self.root, rel);
        }
        let at = match self.open.iter().position(|(p, _)| p == parent) {
            Some(at) => at,
            None => {
                if self.open.len() == Self::KEPT {
                    self.open.remove(0);
                }
                let dir = open_dir_at(self.root, parent);
                self.open.push((parent.to_string(), dir));
                self.open.len() - 1
            }
        };
        match &self.open[at].1 {
            Some(dir) => (dir, name),
            None => (self.root, rel),
        }
    }
}

/// Opens directory `rel` relative to `dir` for `*at` calls only
/// (`O_PATH`), following symlinks as a path walk does.
fn open_dir_at(dir: &std::fs::File, rel: &str) -> Option<std::fs::File> {
    open_with(dir, rel, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_stats_the_same_through_its_open_parent() {
        let t = tempfile::tempdir().unwrap();
        let root_path = t.path();
        std::fs::create_dir_all(root_path.join("a/b")).unwrap();
        std::fs::write(root_path.join("a/b/f.txt"), "x").unwrap();
        std::os::unix::fs::symlink("a", root_path.join("link")).unwrap();
        let root = std::fs::File::open(root_path).unwrap();
        let mut dirs = ParentDirs::new(&root);
        let ino = |r: Option<std::io::Result<libc::stat>>| r.unwrap().map(|st| st.st_ino).ok();
        for rel in [
            "a/b/f.txt",
            "link/b/f.txt",
            "a/b/gone",
            "nowhere/f.txt",
            "a/b/f.txt/x",
            "a/b",
            "f",
        ] {
            let (dir, name) = dirs.split(rel);
            assert_eq!(ino(lstat_at(dir, name)), ino(lstat_at(&root, rel)), "{rel}");
        }
        // a parent that cannot be opened is left to the walk
        assert_eq!(dirs.open.len(), ParentDirs::KEPT);
        let (dir, name) = dirs.split("nowhere/f.txt");
        assert!(std::ptr::eq(dir, &root));
        assert_eq!(name, "nowhere/f.txt");
    }
}
